"""`stablesr upscale` against bad inputs: decompression bombs, absurd scales, outputs that appear during a
run, and one failing file in a batch. Each case: no traceback, the right exit code, nothing lost."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def tiny_png_bomb(path: Path, side: int = 17000) -> Path:
    """A valid, few-KB grayscale PNG of side x side zero pixels (decoding it would allocate side^2 bytes+)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * ((side + 1) * side), 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def photo(tmp_path) -> Path:
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(path)
    return path


def test_a_png_bomb_is_refused_from_its_header_before_decoding(cli, tmp_path, tiny_model_dir, photo):
    bomb = tiny_png_bomb(photo.parent / "bomb.png")
    assert bomb.stat().st_size < 400_000
    start = time.perf_counter()
    code, out, err = cli("upscale", photo.parent, "-o", tmp_path / "out", "--model", tiny_model_dir, "--steps", "1",
                         "--tile-size", "8", "--tile-overlap", "4", "--no-progress")
    assert code == 1  # the bomb fails alone; the photo is done
    assert "bomb.png" in err and "MP limit" in err and "68000x68000" in err
    assert "1 done, 0 skipped, 1 failed" in out
    assert (tmp_path / "out" / "photo.png").is_file() and not (tmp_path / "out" / "bomb.png").exists()
    assert time.perf_counter() - start < 120  # refused from the header: no 289 MP decode happened


@pytest.mark.parametrize("scale", ["0.01", "2000"])
def test_empty_or_absurd_scales_fail_each_file_with_one_line(cli, tmp_path, tiny_model_dir, photo, scale):
    code, out, err = cli("upscale", photo, "-o", tmp_path / "out", "--model", tiny_model_dir, "--scale", scale,
                         "--no-progress")
    assert code == 1 and "0 done, 0 skipped, 1 failed" in out
    assert ("empty" if scale == "0.01" else "MP limit") in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_output_that_appears_during_the_run_is_kept(cli, tmp_path, tiny_model_dir, photo, monkeypatch):
    """Another run into the same folder writes photo.png after this run planned it: without --overwrite it stays."""
    from stablesr.upscaler import Upscaler

    target = tmp_path / "out" / "photo.png"
    real_tensor = Upscaler.upscale_tensor

    def rival_writes_first(self, lr, *, seed=0, **kwargs):
        result = real_tensor(self, lr, seed=seed, **kwargs)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (9, 9, 9)).save(target)
        return result

    monkeypatch.setattr(Upscaler, "upscale_tensor", rival_writes_first)
    code, out, err = cli("upscale", photo, "-o", tmp_path / "out", "--model", tiny_model_dir, "--steps", "1",
                         "--tile-size", "8", "--tile-overlap", "4", "--no-progress")
    assert code == 0 and "0 done, 1 skipped, 0 failed" in out and "kept it" in err
    assert np.asarray(Image.open(target)).tolist() == [[[9, 9, 9]] * 4] * 4
    assert [p.name for p in target.parent.iterdir()] == ["photo.png"]  # no temporary file left


def test_a_runtime_error_fails_one_file_and_the_batch_goes_on(cli, tmp_path, tiny_model_dir, photo, monkeypatch):
    from stablesr.upscaler import Upscaler

    second = photo.parent / "second.png"
    Image.open(photo).save(second)
    real_tensor = Upscaler.upscale_tensor
    calls = []

    def out_of_memory_once(self, lr, *, seed=0, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory:\n"
                               "you tried to allocate 9000000000 bytes.")
        return real_tensor(self, lr, seed=seed, **kwargs)

    monkeypatch.setattr(Upscaler, "upscale_tensor", out_of_memory_once)
    code, out, err = cli("upscale", photo.parent, "-o", tmp_path / "out", "--model", tiny_model_dir, "--steps", "1",
                         "--tile-size", "8", "--tile-overlap", "4", "--no-progress")
    assert code == 1 and "1 done, 0 skipped, 1 failed" in out
    assert "not enough memory" in err and "you tried" not in err  # one line per failure
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_a_bad_memory_budget_is_a_usage_error(cli, tmp_path, tiny_model_dir, photo):
    code, out, err = cli("upscale", photo, "-o", tmp_path / "out", "--model", tiny_model_dir, "--max-memory", "lots")
    assert code == 2 and "--max-memory 'lots' (max_memory): must be a size such as 6GB" in err
    assert not (tmp_path / "out").exists()


def test_an_image_over_the_memory_budget_fails_alone_before_decoding(cli, tmp_path, tiny_model_dir, photo,
                                                                     monkeypatch):
    from stablesr import imaging

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded an image that was refused from its header")

    bomb = tiny_png_bomb(photo.parent / "bomb.png", side=4000)  # 16 MP -> 256 MP at x4: under the MP limit, over 2 GB
    monkeypatch.setattr("stablesr.upscaler.load_image", lambda path, **kw: no_decode() if path == bomb
                        else imaging.load_image(path, **kw))
    code, out, err = cli("upscale", photo.parent, "-o", tmp_path / "out", "--model", tiny_model_dir, "--steps", "1",
                         "--tile-size", "8", "--tile-overlap", "4", "--no-progress", "--max-memory", "2GB")
    assert code == 1 and "1 done, 0 skipped, 1 failed" in out
    assert "bomb.png: StableSR on 4000x4000 (upsampled to 16000x16000) needs" in err and "--max-memory" in err
    assert not (tmp_path / "out" / "bomb.png").exists()


def test_realesrgan_refuses_a_bomb_from_its_header_at_any_scale(cli, tmp_path, photo):
    from stablesr.models.rrdbnet import RRDBNet

    weights = tmp_path / "tiny_rrdb.pth"
    torch.manual_seed(0)
    torch.save(RRDBNet(num_features=8, num_blocks=1, growth_channels=4).state_dict(), weights)
    tiny_png_bomb(photo.parent / "bomb.png")
    common = ("--method", "realesrgan", "--realesrgan-weights", weights, "--no-progress")
    code, out, err = cli("upscale", photo.parent, "-o", tmp_path / "out", "--scale", "0.5", *common)
    assert code == 1 and "1 done, 0 skipped, 1 failed" in out
    assert "68000x68000" in err and "MP limit" in err  # the x4 network output, from the header
    code, out, err = cli("upscale", photo, "-o", tmp_path / "small", "--max-memory", "1MB", *common)
    assert code == 1 and "Real-ESRGAN on 16x12 needs" in err and "--max-memory" in err
    assert not (tmp_path / "small").exists() or not any((tmp_path / "small").iterdir())
