"""Malicious and broken checkpoints, broken model folders and half-written conversions: each is
refused with one clear error, runs no code, allocates nothing unbounded and changes nothing."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest
import torch

from stablesr.errors import StableSRError
from stablesr.weights.folders import MANIFEST, apply_umask, write_model_folder
from stablesr.weights.io import CheckpointReadError, InertObject, _read_pickle, load_state_dict, save_state_dict
from stablesr.weights.loading import load_pipeline

PAYLOAD_RAN = []


class Bomb:
    """Pickles as builtins.<name>(range(10**9)) (or bytearray(10**12)): gigabytes from a few bytes."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        if self.name == "bytearray":
            return builtins.bytearray, (10**12,)
        return getattr(builtins, self.name), (range(10**9),)


class Payload:
    def __reduce__(self):
        return PAYLOAD_RAN.append, ("ran",)


@pytest.mark.parametrize("name", ["set", "frozenset", "list", "bytearray"])
def test_container_bombs_stay_inert(tmp_path, name):
    path = tmp_path / "bomb.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "bomb": Bomb(name)}, path)
    assert path.stat().st_size < 4096
    content = _read_pickle(path, trust_pickle=False, map_location="cpu")
    assert isinstance(content["bomb"], InertObject) and content["bomb"].class_path == f"builtins.{name}"
    assert isinstance(content["bomb"].args[0], InertObject) or name == "bytearray"
    assert torch.equal(load_state_dict(path)["w"], torch.ones(2))


def test_a_stride_zero_giant_view_is_refused(tmp_path):
    path = tmp_path / "expanded.pt"
    torch.save({"w": torch.zeros(1).expand(10**7)}, path)
    with pytest.raises(CheckpointReadError, match="more elements than their stored data"):
        load_state_dict(path)


def _broken_checkpoints(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, good)
    save_state_dict({"w": torch.arange(1000.0)}, tmp_path / "good.safetensors")
    data, tensors = good.read_bytes(), (tmp_path / "good.safetensors").read_bytes()
    files = {"truncated.ckpt": data[: len(data) // 2], "empty.ckpt": b"", "garbage.pt": os.urandom(2048),
             "truncated.safetensors": tensors[: len(tensors) // 2], "empty.safetensors": b"",
             "header_lies.safetensors": (10**12).to_bytes(8, "little") + b"{}", "weights.txt": b"w"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    legacy = io.BytesIO()  # the pre-1.6 format: the pickle declares each storage's size before its data
    torch.save({"w": torch.zeros(54321)}, legacy, _use_new_zipfile_serialization=False)
    declared = b"M" + struct.pack("<H", 54321)  # BININT2 54321 in the storage's persistent id
    assert legacy.getvalue().count(declared) == 2
    lying = legacy.getvalue().replace(declared, b"J" + struct.pack("<i", 2_000_000_000), 1)  # 8 GB declared
    (tmp_path / "legacy_size_lie.pt").write_bytes(lying)
    torch.save([1, 2, 3], tmp_path / "a_list.pt")
    torch.save({"state_dict": {"w": "not a tensor"}}, tmp_path / "strings.ckpt")
    (tmp_path / "folder.ckpt").mkdir()
    names = [*files, "legacy_size_lie.pt", "a_list.pt", "strings.ckpt", "folder.ckpt", "absent.ckpt"]
    return {name: tmp_path / name for name in names}


BROKEN = ["truncated.ckpt", "empty.ckpt", "garbage.pt", "truncated.safetensors", "empty.safetensors",
          "header_lies.safetensors", "weights.txt", "legacy_size_lie.pt", "a_list.pt", "strings.ckpt", "folder.ckpt",
          "absent.ckpt"]


@pytest.mark.parametrize("name", BROKEN)
def test_broken_checkpoints_raise_one_clear_error(tmp_path, name):
    path = _broken_checkpoints(tmp_path)[name]
    with pytest.raises(StableSRError, match=str(path.name)):
        load_state_dict(path)


def test_a_code_payload_in_a_checkpoint_never_runs(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointReadError, match="evil.ckpt"):  # getattr(list, 'append') is inert: not callable
        load_state_dict(tmp_path / "evil.ckpt")
    assert PAYLOAD_RAN == []


# ---------------------------------------------------------------------------------------------- model folders
@pytest.fixture
def model_dir(tmp_path, tiny_pipeline) -> Path:
    return write_model_folder(tmp_path / "model", lambda folder: tiny_pipeline.save_pretrained(folder))


def _break(folder: Path, how: str) -> None:
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "grown weights":
        weights.write_bytes(weights.read_bytes() + b" ")
    elif how == "missing component":
        shutil.rmtree(folder / "vae")
    elif how == "mixed write":  # an older writer replaced unet/ only, with other weights of the same size
        from diffusers import UNet2DConditionModel

        size = weights.stat().st_size
        torch.manual_seed(1)
        UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).save_pretrained(
            folder / "unet")
        assert weights.stat().st_size == size  # only the content tells the two writes apart
    elif how == "bad manifest":
        (folder / MANIFEST).write_text("{not json")
    elif how == "no manifest, missing weights":
        (folder / MANIFEST).unlink()
        weights.unlink()
    elif how == "no manifest, missing component":
        (folder / MANIFEST).unlink()
        shutil.rmtree(folder / "sr_module")
    elif how == "bad model_index":
        (folder / MANIFEST).unlink()
        (folder / "model_index.json").write_text("[")


FOLDER_DAMAGE = ["truncated weights", "grown weights", "missing component", "mixed write", "bad manifest",
                 "no manifest, missing weights", "no manifest, missing component", "bad model_index"]


@pytest.mark.parametrize("how", FOLDER_DAMAGE)
def test_broken_model_folders_are_refused_at_load(model_dir, how):
    _break(model_dir, how)
    with pytest.raises(StableSRError, match="model folder"):
        load_pipeline(model_dir)


def test_whole_folders_load_with_and_without_a_manifest(model_dir, tiny_pipeline, tmp_path):
    manifest = json.loads((model_dir / MANIFEST).read_text())
    unet_weights = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    size, digest = manifest["files"]["unet/diffusion_pytorch_model.safetensors"].split(":")
    assert int(size) == unet_weights.stat().st_size and len(digest) == 32 and len(manifest["files"]) == 10
    assert torch.equal(load_pipeline(model_dir).unet.conv_in.weight, tiny_pipeline.unet.conv_in.weight)
    tiny_pipeline.save_pretrained(tmp_path / "plain")  # an older version's folder: no manifest
    assert torch.equal(load_pipeline(tmp_path / "plain").unet.conv_in.weight, tiny_pipeline.unet.conv_in.weight)


def test_a_failed_overwrite_leaves_the_old_folder_as_it_was(model_dir, tiny_pipeline):
    before = {p: p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()}

    def save_until_full(folder):
        tiny_pipeline.unet.save_pretrained(folder / "unet")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_model_folder(model_dir, save_until_full, overwrite=True)
    assert {p: p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]  # no temporary folder left
    with pytest.raises(StableSRError, match="pass --overwrite"):
        write_model_folder(model_dir, save_until_full)


def test_a_folder_of_other_files_is_never_replaced(tmp_path, tiny_pipeline):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"precious")
    with pytest.raises(StableSRError, match="holds files but no model"):
        write_model_folder(tmp_path / "photos", tiny_pipeline.save_pretrained, overwrite=True)
    assert (tmp_path / "photos" / "keep.jpg").read_bytes() == b"precious"


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_weight_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        save_state_dict({"w": torch.ones(1)}, tmp_path / "w.safetensors")
        (tmp_path / "sub").mkdir()
        from safetensors.torch import save_file

        save_file({"w": torch.ones(1)}, str(tmp_path / "sub" / "raw.safetensors"))
        assert stat.S_IMODE((tmp_path / "sub" / "raw.safetensors").stat().st_mode) == 0o600  # safetensors' own
        apply_umask(tmp_path / "sub")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "sub" / "raw.safetensors").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o777 & ~mask


def test_model_folders_are_written_with_the_umask(model_dir):
    modes = {stat.S_IMODE(p.stat().st_mode) for p in model_dir.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~_umask()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_upscale_refuses_a_mixed_model_folder_in_one_line(cli, model_dir, tmp_path):
    from robust_helpers import write_image

    _break(model_dir, "mixed write")
    write_image(tmp_path / "lr.png", size=(12, 10))
    code, _, err = cli("upscale", tmp_path / "lr.png", "-o", tmp_path / "sr", "--model", model_dir, "--device", "cpu")
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("error: model folder") and "incomplete or mixed" in lines[-1]
    assert not (tmp_path / "sr").exists()
