"""Memory-mapped weights handed back to the page cache (`stablesr.weights.pages`): what is dropped comes
back bit for bit, streamed forwards equal resident ones, written mappings are never dropped, and packed
weights replace their mapped originals instead of doubling them."""

import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stablesr.models.cpu_kernels import packed_weights, use_conv_linears
from stablesr.weights.pages import (
    PAGE,
    MappedPages,
    clean_mappings,
    drop_mapped_weights,
    file_mappings,
    mapped_bytes,
    streamed_weights,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page dropping is Linux-only")


class Net(nn.Module):
    """A conv, a linear over tokens and a norm, each with several pages of weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 64, 3, padding=1)  # 73 kB
        self.norm = nn.GroupNorm(8, 64)
        self.linear = nn.Linear(64, 256)  # 66 kB
        self.out = nn.Conv2d(256, 8, 1)

    def forward(self, x):
        h = self.norm(self.conv(x))
        tokens = self.linear(h.flatten(2).transpose(1, 2))  # (B, HW, 256)
        return self.out(tokens.transpose(1, 2).reshape(x.shape[0], 256, *x.shape[-2:]))


def mapped_net(tmp_path, seed: int = 0, name: str = "net.safetensors") -> tuple[Net, dict]:
    """A Net whose weights are views of a memory-mapped safetensors file (as a model folder loads), and a
    private copy of the same values."""
    torch.manual_seed(seed)
    reference = {key: value.clone() for key, value in Net().state_dict().items()}
    save_file(reference, str(tmp_path / name))
    net = Net().eval().requires_grad_(False)
    net.load_state_dict(load_file(str(tmp_path / name)), assign=True)
    return net, reference


def mapping_of(net: nn.Module, mappings) -> list:
    addresses = [p.data_ptr() for p in net.parameters()]
    return [m for m in mappings if any(m.holds(a) for a in addresses)]


def test_loaded_safetensors_weights_are_clean_file_mappings(tmp_path):
    net, _ = mapped_net(tmp_path)
    (mapping,) = mapping_of(net, file_mappings())
    assert mapping.path.endswith("net.safetensors") and mapping.anonymous_kb == 0
    assert all(mapping.holds(p.data_ptr()) for p in net.parameters())
    assert mapping in clean_mappings()


def test_dropped_pages_leave_memory_and_come_back_bit_for_bit(tmp_path):
    net, reference = mapped_net(tmp_path)
    (mapping,) = mapping_of(net, clean_mappings())
    total = sum(p.numel() * p.element_size() for p in net.parameters())
    sum(float(p.sum()) for p in net.parameters())  # read every page
    assert mapped_bytes([mapping]) >= total - PAGE
    advised = drop_mapped_weights([net])
    assert advised >= total
    assert mapped_bytes([mapping]) == 0
    for key, value in net.state_dict().items():  # read back from the page cache: the file's bytes
        assert torch.equal(value, reference[key]), key
    assert mapped_bytes([mapping]) >= total - PAGE
    pages = MappedPages([net.linear.weight], [mapping])
    drop_mapped_weights([net])
    if pages.populate():  # Linux 5.14+: mapped in one call, without reading
        assert mapped_bytes([mapping]) >= net.linear.weight.numel() * 4
        assert torch.equal(net.linear.weight, reference["linear.weight"])


def test_mapped_pages_cover_whole_pages_and_merge(tmp_path):
    net, _ = mapped_net(tmp_path)
    mappings = clean_mappings()
    pages = MappedPages(list(net.parameters()), mappings)
    assert all(start % PAGE == 0 and end % PAGE == 0 for start, end in pages.ranges)
    assert all(mapping.start <= start < end <= mapping.end for start, end in pages.ranges for mapping in mappings
               if mapping.holds(start))
    assert len(pages.ranges) == 1  # the tensors of one file are contiguous: one range
    (mapping,) = mapping_of(net, mappings)
    first = min(p.data_ptr() for p in net.parameters())
    last = max(p.data_ptr() + p.numel() * p.element_size() for p in net.parameters())
    assert pages.ranges == [(first // PAGE * PAGE, min(-(-last // PAGE) * PAGE, mapping.end))]
    assert MappedPages([net.conv.bias], mappings, whole_files=True).ranges == [(mapping.start, mapping.end)]
    assert MappedPages([torch.randn(4096)], mappings).ranges == []  # ordinary memory is never touched


def test_streamed_forward_is_bit_identical_and_holds_one_layer(tmp_path):
    net, reference = mapped_net(tmp_path)
    (mapping,) = mapping_of(net, clean_mappings())
    plain = Net().eval()
    plain.load_state_dict(reference)
    x = torch.randn(2, 32, 12, 12)
    expected = net(x)
    assert torch.equal(expected, plain(x))
    held = []
    probe = net.out.register_forward_pre_hook(lambda *_: held.append(mapped_bytes([mapping])))
    with streamed_weights([net]) as streamed:
        assert streamed.layers == 4 and streamed.nbytes >= sum(p.numel() * 4 for p in net.parameters())
        assert mapped_bytes([mapping]) == 0  # dropped on entry
        for _ in range(2):
            assert torch.equal(net(x), expected)
            assert mapped_bytes([mapping]) == 0  # every layer handed its pages back after running
    probe.remove()
    # Before the last layer ran, the earlier layers (136 kB) had already handed theirs back, with the
    # neighbours' pages their reads mapped in passing
    assert max(held) == 0
    assert not any(layer._forward_hooks for layer in net.modules())  # the hooks are gone after the context
    sum(float(p.sum()) for p in net.parameters())
    assert mapped_bytes([mapping]) > 0  # outside the context the pages stay once read


def test_a_written_mapping_is_never_dropped(tmp_path):
    """A weight changed in place lives only in its private copy-on-write page: dropping it would bring back
    the file's old value, so the whole mapping is left alone."""
    net, reference = mapped_net(tmp_path)
    with torch.no_grad():
        net.conv.weight[0, 0, 0, 0] += 1.0
    (mapping,) = mapping_of(net, file_mappings())
    assert mapping.anonymous_kb > 0
    assert mapping not in clean_mappings()
    assert drop_mapped_weights([net]) == 0
    with streamed_weights([net]) as streamed:
        assert streamed.layers == 0
        net(torch.randn(1, 32, 4, 4))
    assert torch.equal(net.conv.weight[0, 0, 0, 0], reference["conv.weight"][0, 0, 0, 0] + 1.0)  # kept


def test_packed_weights_replace_their_mapped_originals(tmp_path):
    """Packing a mapped weight hands its pages back (the packed copy is what is held), and afterwards the
    weight is the file's view again, equal bit for bit."""
    net, reference = mapped_net(tmp_path)
    (mapping,) = mapping_of(net, clean_mappings())
    use_conv_linears(net)
    x = torch.randn(1, 32, 16, 16)
    expected = net(x)
    with packed_weights([net], min_bytes=PAGE) as packed:
        assert len(packed.layers) == 3  # conv (73 kB), linear (64 kB), out conv (8 kB)
        assert packed.dropped >= sum(reference[f"{k}.weight"].numel() * 4 for k in ("conv", "linear", "out"))
        # The forward read every page; packing handed back all but those of the 5 unpacked biases and norm
        assert mapped_bytes([mapping]) <= 5 * 2 * PAGE
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    assert all(mapping.holds(p.data_ptr()) for p in net.parameters())
    for key, value in net.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert torch.equal(net(x), expected)


def test_packed_weights_in_ordinary_memory_are_restored_as_before():
    torch.manual_seed(0)
    net = Net().eval().requires_grad_(False)
    use_conv_linears(net)
    reference = {key: value.clone() for key, value in net.state_dict().items()}
    with packed_weights([net], min_bytes=PAGE) as packed:
        assert packed.dropped == 0 and len(packed.layers) >= 2
    for key, value in net.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_pipeline_stream_weights_is_bit_identical_to_resident(tiny_model_dir):
    """The tiny StableSR model loaded from its folder: `stream_weights` gives the same image, bit for bit,
    and the loader with resident=False holds none of the weight pages."""
    from stablesr.pipelines.stablesr import StableSRPipeline

    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for stream in (False, True):
        pipe = StableSRPipeline.from_pretrained(tiny_model_dir, resident=not stream)
        pipe.set_progress_bar_config(disable=True)
        addresses = [p.data_ptr() for name in ("unet", "sr_module", "vae")
                     for p in getattr(pipe, name).parameters()]
        mappings = [m for m in clean_mappings() if any(m.holds(a) for a in addresses)]
        assert len(mappings) == 3  # unet, sr_module, vae: every weight a view of its file
        assert all(any(m.holds(a) for m in mappings) for a in addresses)
        if stream:
            assert mapped_bytes(mappings) == 0
        outputs[stream] = pipe(image, num_inference_steps=3, stream_weights=stream, output_type="np",
                               generator=torch.Generator().manual_seed(0)).images
        if stream:
            assert mapped_bytes(mappings) == 0  # every layer handed its pages back
        del pipe
    assert np.array_equal(outputs[False], outputs[True])


def test_a_budget_too_small_for_resident_weights_suggests_streaming(tiny_model_dir):
    from stablesr.pipelines.stablesr import StableSRPipeline
    from stablesr.tiling.budget import MemoryBudgetError

    pipe = StableSRPipeline.from_pretrained(tiny_model_dir)
    settings = pipe.resolve_settings(max_memory="1MB")
    with pytest.raises(MemoryBudgetError, match=r"--stream-weights: .* of model weights are held now"):
        pipe.plan_memory(64, 64, settings)
    with pytest.raises(MemoryBudgetError) as caught:  # already streaming: nothing more to suggest
        pipe.plan_memory(64, 64, pipe.resolve_settings(max_memory="1MB", stream_weights=True))
    assert "--stream-weights" not in str(caught.value)


def test_the_decode_runs_without_the_denoisers_weight_pages(tiny_model_dir):
    """On a CPU the denoiser's mapped weights go back to the page cache before the decode (it needs only
    the VAE): after a resident run the UNet and SR module hold no pages, the VAE does."""
    from stablesr.pipelines.stablesr import StableSRPipeline

    pipe = StableSRPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    mapping = {name: [m for m in clean_mappings() if m.holds(next(getattr(pipe, name).parameters()).data_ptr())]
               for name in ("unet", "sr_module", "vae")}
    assert all(len(found) == 1 and mapped_bytes(found) > 0 for found in mapping.values())  # loaded resident
    pipe(torch.rand(1, 3, 24, 24), num_inference_steps=2, output_type="pt")
    assert mapped_bytes(mapping["unet"]) == 0 and mapped_bytes(mapping["sr_module"]) == 0
    assert mapped_bytes(mapping["vae"]) > 0


def test_stream_weights_warns_when_nothing_is_mapped(tiny_pipeline):
    """Weights built in memory (or converted to another dtype, or on a GPU) cannot be streamed: the run
    goes on with them resident, and says so."""
    with pytest.warns(UserWarning, match="no weights to stream"):
        tiny_pipeline(torch.rand(1, 3, 16, 16), num_inference_steps=1, stream_weights=True, output_type="pt")
