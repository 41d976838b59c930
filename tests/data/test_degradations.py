"""Second-order pipeline and presets: ranges, probabilities, determinism, records, sizes."""

import json
import math
from collections import Counter

import pytest
import torch

from stablesr.data.degradations import (
    PRESETS,
    apply_degradation,
    degrade,
    load_overrides,
    params_from_record,
    params_to_record,
    preset_settings,
    sample_degradation_params,
)
from stablesr.data.realesrgan import RealESRGANSettings


def _gt(batch=2, size=96, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([x, y, x * y]).expand(batch, 3, size, size) * 0.8 + 0.1
    return torch.clamp(image + 0.05 * torch.randn(batch, 3, size, size, generator=generator), 0, 1)


def _records(name: str, count: int, seed: int = 0) -> list:
    settings = preset_settings(name)
    generator = torch.Generator().manual_seed(seed)
    return [
        sample_degradation_params(settings, batch_size=1, gt_size=(512, 512), generator=generator)[0]
        for _ in range(count)
    ]


def _inside(value, value_range) -> bool:
    return value_range[0] <= value <= value_range[1]


@pytest.mark.parametrize("name", ["realesrgan", "stablesr"])
def test_every_draw_stays_inside_its_preset_range(name):
    settings = preset_settings(name)
    for p in _records(name, 400):
        for noise, noise_settings in ((p.noise1, settings.noise1), (p.noise2, settings.noise2)):
            strength_range = (
                noise_settings.sigma_range if noise.kind == "gaussian" else noise_settings.poisson_scale_range
            )
            assert _inside(noise.strength, strength_range)
        for resize, resize_settings in ((p.resize1, settings.resize1), (p.resize2, settings.resize2)):
            assert _inside(resize.scale, resize_settings.scale_range) and resize.mode in resize_settings.modes
            assert {"up": resize.scale >= 1, "down": resize.scale <= 1, "keep": resize.scale == 1}[resize.direction]
        assert _inside(p.jpeg1_quality, settings.jpeg1_range) and _inside(p.jpeg2_quality, settings.jpeg2_range)
        assert _inside(p.kernel1.sigma_x, settings.blur1.sigma_range) or p.kernel1.kind == "sinc"
        assert p.kernel2 is None or _inside(p.kernel2.sigma_x, settings.blur2.sigma_range) or p.kernel2.kind == "sinc"
        assert p.final_kernel.kind == "pulse" or math.pi / 3 <= p.final_kernel.omega <= math.pi


def test_stablesr_probabilities_match_within_sampling_error():
    records = _records("stablesr", 2000, seed=1)  # sampling only: no image work
    n = len(records)

    def rate(predicate) -> float:
        return sum(map(predicate, records)) / n

    # tolerances are about 4 binomial standard deviations for n = 2000
    assert rate(lambda p: p.kernel2 is not None) == pytest.approx(0.5, abs=0.045)
    assert rate(lambda p: p.final_kernel.kind == "sinc") == pytest.approx(0.8, abs=0.036)
    assert rate(lambda p: p.final_order == "resize_first") == pytest.approx(0.5, abs=0.045)
    assert rate(lambda p: p.noise1.kind == "gaussian") == pytest.approx(0.5, abs=0.045)
    assert rate(lambda p: p.noise2.gray) == pytest.approx(0.4, abs=0.044)
    assert rate(lambda p: not p.degraded) == pytest.approx(0.01, abs=0.009)
    directions1 = Counter(p.resize1.direction for p in records)
    directions2 = Counter(p.resize2.direction for p in records)
    for direction, prob1, prob2 in (("up", 0.2, 0.3), ("down", 0.7, 0.4), ("keep", 0.1, 0.3)):
        assert directions1[direction] / n == pytest.approx(prob1, abs=0.041)
        assert directions2[direction] / n == pytest.approx(prob2, abs=0.044)
    modes = Counter(p.resize1.mode for p in records)
    assert all(count / n == pytest.approx(1 / 3, abs=0.042) for count in modes.values())


def test_presets_carry_the_papers_numbers():
    realesrgan, stablesr, ccsr = (preset_settings(n) for n in ("realesrgan", "stablesr", "ccsr"))
    assert realesrgan.noise1.sigma_range == (1.0, 30.0) and realesrgan.resize1.scale_range == (0.15, 1.5)
    assert realesrgan.second_blur_prob == 0.8 and realesrgan.jpeg2_range == (30, 95)
    assert stablesr.noise1.sigma_range == (1.0, 15.0) and stablesr.blur2.sigma_range == (0.2, 1.0)
    assert stablesr.jpeg2_range == (60, 100) and stablesr.no_degradation_prob == 0.01 and stablesr.usm_gt
    assert ccsr.noise2 == stablesr.noise2 and not ccsr.usm_gt and ccsr.no_degradation_prob == 0.0
    assert set(PRESETS) == {"realesrgan", "stablesr", "ccsr", "bsrgan", "bicubic"}


@pytest.mark.parametrize("name", ["realesrgan", "stablesr", "ccsr", "bsrgan", "bicubic"])
@pytest.mark.parametrize("scale", [2, 4])
def test_output_sizes_grid_and_records_round_trip(name, scale):
    gt = _gt(batch=2, size=104 if scale == 4 else 64)
    settings = preset_settings(name, scale=scale)
    batch, params = degrade(gt, settings, generator=torch.Generator().manual_seed(5))
    size = gt.shape[-1]
    assert batch.lr.shape == (2, 3, size // scale, size // scale) and batch.lr_up.shape == gt.shape
    assert torch.equal(batch.lr * 255, (batch.lr * 255).round()) and batch.lr.min() >= 0 and batch.lr.max() <= 1
    records = [params_from_record(json.loads(json.dumps(params_to_record(p)))) for p in params]
    assert records == params
    assert torch.equal(apply_degradation(gt, records).lr, batch.lr)


def test_same_seed_same_output_other_seed_differs():
    gt, settings = _gt(), preset_settings("realesrgan")
    first, params_a = degrade(gt, settings, generator=torch.Generator().manual_seed(11))
    second, params_b = degrade(gt, settings, generator=torch.Generator().manual_seed(11))
    third, params_c = degrade(gt, settings, generator=torch.Generator().manual_seed(12))
    assert params_a == params_b and torch.equal(first.lr, second.lr)
    assert params_a != params_c and not torch.equal(first.lr, third.lr)


def test_one_record_reproduces_its_image_out_of_the_batch():
    gt = _gt(batch=3)
    batch, params = degrade(gt, preset_settings("ccsr"), generator=torch.Generator().manual_seed(2))
    alone = apply_degradation(gt[1:2], [params_from_record(params_to_record(params[1]))])
    assert torch.equal(alone.lr[0], batch.lr[1])


def test_records_of_different_batches_do_not_mix():
    settings = preset_settings("stablesr")
    generator = torch.Generator().manual_seed(0)
    batches = [
        sample_degradation_params(settings, batch_size=1, gt_size=(96, 96), generator=generator)[0] for _ in range(20)
    ]
    mixed = next(p for p in batches[1:] if p.resize1 != batches[0].resize1)
    with pytest.raises(ValueError, match="share"):
        apply_degradation(_gt(), [batches[0], mixed])


def test_gt_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        degrade(_gt(size=32), preset_settings("stablesr"), generator=torch.Generator().manual_seed(0))


def test_no_degradation_returns_the_gt_and_usm_changes_only_gt():
    gt = _gt()
    settings = RealESRGANSettings(no_degradation_prob=1.0, usm_gt=False)
    batch, params = degrade(gt, settings, generator=torch.Generator().manual_seed(0))
    assert not any(p.degraded for p in params) and torch.equal(batch.lr_up, gt) and torch.equal(batch.gt, gt)
    sharpened, _ = degrade(gt, RealESRGANSettings(no_degradation_prob=1.0), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(sharpened.gt, gt) and torch.equal(sharpened.lr_up, sharpened.gt)


def test_milder_preset_degrades_less_on_average():
    gt = _gt(batch=2, size=96)
    errors = {}
    for name in ("realesrgan", "stablesr"):
        settings = preset_settings(name, overrides={"usm_gt": False, "no_degradation_prob": 0.0})
        values = []
        for seed in range(3):
            batch, _ = degrade(gt, settings, generator=torch.Generator().manual_seed(seed))
            values.append(torch.mean((batch.lr_up - gt) ** 2).item())
        errors[name] = sum(values)
    assert errors["stablesr"] < errors["realesrgan"]


def test_overrides_from_a_file_and_unknown_keys(tmp_path):
    path = tmp_path / "over.yaml"
    path.write_text("noise1:\n  sigma_range: [1, 5]\n"
                    "blur1:\n  kernel_probs: {iso: 1.0}\n  sinc_prob: 0\n"
                    "jpeg2_range: [90, 95]\n")
    settings = preset_settings("stablesr", overrides=load_overrides(path))
    assert settings.noise1.sigma_range == (1.0, 5.0) and settings.jpeg2_range == (90, 95)
    assert settings.blur1.kernel_probs == (("iso", 1.0),) and settings.noise2 == preset_settings("stablesr").noise2
    params = sample_degradation_params(settings, batch_size=50, gt_size=(96, 96), generator=torch.Generator())
    kinds = {p.kernel1.kind for p in params}
    assert kinds == {"iso"}
    with pytest.raises(ValueError, match="unknown settings"):
        preset_settings("stablesr", overrides={"noise3": {}})
    with pytest.raises(ValueError, match="unknown degradation preset"):
        preset_settings("nope")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_degradation_on_the_gpu_reproduces_from_records():
    gt = _gt(batch=4, size=128).cuda()
    batch, params = degrade(gt, preset_settings("realesrgan"), generator=torch.Generator().manual_seed(0))
    assert batch.lr.device.type == "cuda" and batch.lr.shape == (4, 3, 32, 32)
    assert torch.equal(apply_degradation(gt, params).lr, batch.lr)
