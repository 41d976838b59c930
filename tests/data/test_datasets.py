"""HR-folder and paired-folder datasets, and the batched degrader with its shuffle queue."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stablesr.data.batch_degrader import BatchDegrader
from stablesr.data.datasets import HRFolderDataset, PairedFolderDataset, crop_or_pad, read_rgb
from stablesr.data.degradations import apply_degradation, params_from_record, preset_settings


def _write_image(path, height, width, seed=0):
    """Smooth gradients + a square + noise, saved as 8-bit PNG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    gradient = np.stack([x / width, y / height, (x + y) / (height + width)], -1) * 200
    image = gradient + rng.normal(0, 6, (height, width, 3))
    image[height // 4 : height // 2, width // 4 : width // 2] = (240, 40, 30)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def hr_folder(tmp_path):
    folder = tmp_path / "hr"
    (folder / "sub").mkdir(parents=True)
    _write_image(folder / "a.png", 140, 120, seed=1)
    _write_image(folder / "sub" / "b.png", 100, 110, seed=2)  # smaller than the crop: reflect-padded
    _write_image(folder / "tiny.png", 40, 40, seed=3)  # filtered out
    (folder / "broken.png").write_bytes(b"not a png")  # filtered out
    return folder


def test_filtering_shapes_and_record_reproduction(hr_folder):
    dataset = HRFolderDataset([hr_folder], crop_size=128, degradation=preset_settings("ccsr"), seed=3)
    assert [p.name for p in dataset.files] == ["a.png", "b.png"] and dataset.left_out == 2
    item = dataset[0]
    assert item["gt"].shape == (3, 128, 128) and item["lr"].shape == (3, 32, 32)
    assert item["lr_up"].shape == (3, 128, 128)
    assert 0 <= item["gt"].min() and item["gt"].max() <= 1
    record = params_from_record(json.loads(item["params"]))
    assert torch.equal(apply_degradation(item["gt"][None], [record]).lr[0], item["lr"])  # ccsr: no USM, gt is the crop
    again = HRFolderDataset([hr_folder], crop_size=128, degradation=preset_settings("ccsr"), seed=3)[0]
    assert torch.equal(again["lr"], item["lr"]) and again["params"] == item["params"]
    dataset.set_epoch(1)
    assert dataset[0]["params"] != item["params"]


def test_reflect_pad_keeps_the_image_in_the_top_left():
    image = torch.rand(3, 100, 90)
    out, corner = crop_or_pad(image, size=128, crop="random", generator=torch.Generator().manual_seed(0))
    assert corner == (0, 0) and torch.equal(out[:, :100, :90], image)
    assert torch.equal(out[:, 100, :90], image[:, 98, :])  # reflection without repeating the edge row
    center, corner = crop_or_pad(torch.rand(3, 140, 120), size=128, crop="center", generator=torch.Generator())
    assert corner == (6, 0) and center.shape == (3, 128, 128)


def test_dataloader_with_workers_matches_single_process(hr_folder):
    dataset = HRFolderDataset([hr_folder], crop_size=128, degradation=preset_settings("stablesr"), seed=0)
    single = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=0)))
    workers = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)))
    assert single["lr"].shape == (2, 3, 32, 32) and len(single["params"]) == 2
    assert torch.equal(single["lr"], workers["lr"]) and single["params"] == workers["params"]


def test_gt_only_items_and_min_size_rule(hr_folder):
    dataset = HRFolderDataset([hr_folder], crop_size=128, min_size=105, hflip=False)
    assert set(dataset[0]) == {"gt", "path"} and len(dataset) == 1
    with pytest.raises(ValueError, match="min_size"):
        HRFolderDataset([hr_folder], crop_size=128, min_size=60)


def test_batch_degrader_queue_passes_through_then_shuffles_matched_pairs():
    settings = preset_settings("ccsr")
    degrader = BatchDegrader(settings, queue_size=4, generator=torch.Generator().manual_seed(0))
    batches = [torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    outs = [degrader(b) for b in batches]
    assert torch.equal(outs[0]["gt"], batches[0]) and torch.equal(outs[1]["gt"], batches[1])  # filling
    seen = torch.cat(batches[:2])
    for gt, lr, params in zip(outs[2]["gt"], outs[2]["lr"], outs[2]["params"]):
        assert any(torch.equal(gt, s) for s in seen)  # comes from the queue, not the new batch
        assert torch.equal(apply_degradation(gt[None], [params_from_record(json.loads(params))]).lr[0], lr)
    assert any(torch.equal(degrader.queue["gt"][i], batches[2][0]) for i in range(2))
    with pytest.raises(ValueError, match="multiple"):
        degrader(torch.rand(3, 3, 64, 64))


def test_paired_folder_dataset(tmp_path):
    for folder in ("lr", "hr"):
        (tmp_path / folder).mkdir()
    _write_image(tmp_path / "hr" / "x.png", 64, 48)
    _write_image(tmp_path / "lr" / "x.png", 16, 12)
    _write_image(tmp_path / "lr" / "y.png", 16, 12)  # no HR partner: ignored
    dataset = PairedFolderDataset(tmp_path / "lr", tmp_path / "hr", scale=4)
    item = dataset[0]
    assert len(dataset) == 1 and item["name"] == "x" and item["lr"].shape == (3, 16, 12)
    assert torch.equal(item["gt"], read_rgb(tmp_path / "hr" / "x.png"))
    with pytest.raises(ValueError, match="2x"):
        PairedFolderDataset(tmp_path / "lr", tmp_path / "hr", scale=2)[0]
