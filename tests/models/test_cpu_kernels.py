"""ConvLinear (a linear layer as a channels-last 1x1 convolution on oneDNN) and the allocator tuning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stablesr.models import cpu_kernels
from stablesr.models.cpu_kernels import MIN_ROWS, ConvLinear, conv_linear, use_conv_linears


def _tolerance(x: torch.Tensor, weight: torch.Tensor) -> float:
    """fp32 summation-order slack: 1e-5 of the largest output (bf16 arithmetic would miss it by 100x)."""
    return 1e-5 * F.linear(x, weight).abs().max().item()


@pytest.mark.parametrize("shape", [(1, 4096, 320), (2, 100, 64), (3, 5, 70, 8), (70, 16), (1, 64, 1)])
def test_conv_linear_equals_linear(shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    weight, bias = torch.randn(24, shape[-1], generator=generator), torch.randn(24, generator=generator)
    out, expected = conv_linear(x, weight, bias), F.linear(x, weight, bias)
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=_tolerance(x, weight))
    torch.testing.assert_close(conv_linear(x, weight, None), F.linear(x, weight), rtol=0,
                               atol=_tolerance(x, weight))


def test_conv_linear_of_transposed_rows_is_contiguous():
    """Rows read off a (B, C, H, W) map (the time-aware encoder's attention): the output must be contiguous,
    as F.linear's is, or the attention after it falls back to its slow kernel."""
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 32, 9, 10, generator=generator)
    rows = image.flatten(2).transpose(1, 2)  # (2, 90, 32), channel stride 90
    weight = torch.randn(48, 32, generator=generator)
    out = conv_linear(rows, weight, None)
    assert out.is_contiguous() and out.shape == (2, 90, 48)
    torch.testing.assert_close(out, F.linear(rows, weight), rtol=0, atol=_tolerance(rows, weight))


def test_conv_linear_layer_is_a_linear_layer():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8, bias=False))
    state = {key: value.clone() for key, value in plain.state_dict().items()}
    x = torch.randn(2, MIN_ROWS + 5, 16)
    expected = plain(x)

    assert use_conv_linears(plain) == 2
    assert all(type(layer) is ConvLinear for layer in (plain[0], plain[2]))
    assert isinstance(plain[0], nn.Linear) and plain.state_dict().keys() == state.keys()
    assert all(torch.equal(plain.state_dict()[key], value) for key, value in state.items())
    out = plain(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert use_conv_linears(plain) == 0  # idempotent

    # Few rows, other dtypes: the plain linear, bit for bit.
    few = torch.randn(3, MIN_ROWS - 1, 16)
    assert torch.equal(plain[0](few), F.linear(few, plain[0].weight, plain[0].bias))
    plain_bf16 = nn.Linear(16, 32).to(torch.bfloat16)
    use_conv_linears(plain_bf16)
    rows_bf16 = torch.randn(1, MIN_ROWS, 16, dtype=torch.bfloat16)
    assert torch.equal(plain_bf16(rows_bf16), F.linear(rows_bf16, plain_bf16.weight, plain_bf16.bias))

    assert use_conv_linears(plain, False) == 2
    assert type(plain[0]) is nn.Linear and torch.equal(plain(x), expected)


def test_conv_linear_gradients_match():
    torch.manual_seed(2)
    layer, reference = nn.Linear(12, 20), nn.Linear(12, 20)
    reference.load_state_dict(layer.state_dict())
    use_conv_linears(layer)
    x = torch.randn(1, 80, 12, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    layer(x).square().sum().backward()
    reference(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-4)


def test_subclasses_of_linear_are_left_alone():
    class Special(nn.Linear):
        pass

    model = nn.Sequential(Special(4, 4), nn.Linear(4, 4))
    assert use_conv_linears(model) == 1
    assert type(model[0]) is Special and type(model[1]) is ConvLinear


def test_allocator_tuning_can_be_refused(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_allocator_tuned", False)
    monkeypatch.setenv(cpu_kernels.ALLOCATOR_ENV, "0")
    assert cpu_kernels.tune_cpu_allocator() is False and not cpu_kernels.allocator_tuned()


def test_allocator_tuning_is_applied_once(monkeypatch):
    calls = []

    class FakeLibc:
        @staticmethod
        def mallopt(param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(cpu_kernels, "_allocator_tuned", False)
    monkeypatch.delenv(cpu_kernels.ALLOCATOR_ENV, raising=False)
    monkeypatch.setattr(cpu_kernels.ctypes, "CDLL", lambda name: FakeLibc())
    assert cpu_kernels.tune_cpu_allocator() is True and cpu_kernels.tune_cpu_allocator() is True
    assert calls == [(-3, 32 * 1024 * 1024), (-1, 2**31 - 1)]  # M_MMAP_THRESHOLD to its ceiling, no trimming


def test_allocator_tuning_without_mallopt(monkeypatch):
    def no_libc(name):
        raise OSError("no such library")

    monkeypatch.setattr(cpu_kernels, "_allocator_tuned", False)
    monkeypatch.delenv(cpu_kernels.ALLOCATOR_ENV, raising=False)
    monkeypatch.setattr(cpu_kernels.ctypes, "CDLL", no_libc)
    assert cpu_kernels.tune_cpu_allocator() is False


def _conv_model() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                          nn.Conv2d(16, 12, 1, bias=False), nn.Flatten(2), nn.Linear(16, 24), nn.Linear(24, 8))
    use_conv_linears(model)
    return model.eval()


def test_packed_weights_compute_the_same_and_come_back_bit_for_bit():
    from stablesr.models.cpu_kernels import PackedConv2d, PackedConvLinear, packed_weights

    model = _conv_model()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x)
        with packed_weights([model], min_bytes=0) as packed:
            assert len(packed.layers) == 5
            assert [type(model[i]) for i in (0, 2, 3, 5, 6)] == [PackedConv2d] * 3 + [PackedConvLinear] * 2
            assert model[0].weight.numel() == 0  # the plain copy is released while packed
            out = model(x)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
        assert out.is_contiguous()
    assert [type(model[i]) for i in (0, 2, 3)] == [nn.Conv2d] * 3 and type(model[5]) is ConvLinear
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    assert not hasattr(model[0], "_packed_weight")


def test_packed_weights_pick_large_layers_refuse_autograd_and_restore_on_error():
    from stablesr.models.cpu_kernels import packed_weights

    model = _conv_model()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    small = 16 * 16 * 3 * 3 * 4  # bytes of model[2]'s weight: the only layer at least this large
    with packed_weights([model], min_bytes=small) as packed:
        assert [layer for layer, *_ in packed.layers] == [model[2]]
    x = torch.randn(1, 8, 8, 8)
    with pytest.raises(RuntimeError, match="inference only"), packed_weights([model], min_bytes=0):
        model(x)  # autograd is on: a packed layer has no backward
    with pytest.raises(KeyError), packed_weights([model], min_bytes=0):
        raise KeyError("an error inside the context")
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    assert all(type(layer) in (nn.Conv2d, ConvLinear, nn.SiLU, nn.Flatten, nn.Sequential) for layer in model.modules())


def test_make_resident_reads_weights_without_changing_them(tmp_path):
    """A safetensors-loaded module (memory-mapped) is read page by page; its values are untouched."""
    from safetensors.torch import load_file, save_file

    from stablesr.weights.loading import make_resident

    model = _conv_model()
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, tmp_path / "w.safetensors")
    loaded = _conv_model()
    loaded.load_state_dict(load_file(tmp_path / "w.safetensors"), assign=True)
    make_resident([loaded, "not a module", None, torch.nn.Identity()])
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in model.state_dict().items())
