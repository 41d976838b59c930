"""CLIP-IQA with a tiny random CLIP, tokenizer and image processor built here (no downloads)."""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from stablesr.errors import WeightsNotFoundError
from stablesr.metrics.clipiqa import CLIPIQA, DEFAULT_MODEL, QUALITY_PROMPTS

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def tiny_tokenizer():
    """Character-level CLIP BPE (no merges): every letter is a token, '</w>' marks a word's last one."""
    symbols = list(string.ascii_lowercase) + ["."]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in symbols:
            vocab[symbol + suffix] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[]), len(vocab)


def save_tiny_clip(folder, seed: int = 0):
    tokenizer, vocab_size = tiny_tokenizer()
    text = {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 24, "bos_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=512))
    model.logit_scale.data.fill_(math.log(100.0))  # CLIP's trained scale, so forward() gives CLIP-IQA's logits
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), tokenizer, processor


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    return folder, *save_tiny_clip(folder)


def test_score_is_softmax_of_clip_logits_over_the_prompt_pair(tiny_clip):
    folder, model, tokenizer, processor = tiny_clip
    metric = CLIPIQA.from_pretrained(folder)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 57, 3), dtype=np.uint8), rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)]
    scores = metric.score_images(images)
    tokens = tokenizer(list(QUALITY_PROMPTS), padding=True, return_tensors="pt")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():  # CLIPModel's own forward: logits_per_image = exp(logit_scale) * cosine
        logits = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                       pixel_values=pixels).logits_per_image
    expected = logits.softmax(dim=-1)[:, 0].double().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-7)
    assert scores.shape == (2,) and scores.dtype == np.float64 and abs(scores[0] - scores[1]) > 1e-4


def test_image_preprocessing_is_clip_normalisation(tiny_clip):
    folder = tiny_clip[0]
    metric = CLIPIQA.from_pretrained(folder)
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # already the model size
    pixels = (image / 255.0 - CLIP_MEAN) / CLIP_STD
    # (H, W, 3) -> (1, 3, H, W)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        direct = metric(tensor).double().numpy()
    np.testing.assert_allclose(metric.score_images([image]), direct, rtol=1e-5, atol=1e-7)


def test_prompt_pair_identities(tiny_clip):
    folder = tiny_clip[0]
    image = np.random.default_rng(2).integers(0, 256, (36, 36, 3), dtype=np.uint8)
    good = CLIPIQA.from_pretrained(folder).score_images([image])[0]
    swapped = CLIPIQA.from_pretrained(folder, prompts=QUALITY_PROMPTS[::-1]).score_images([image])[0]
    same = CLIPIQA.from_pretrained(folder, prompts=("Good photo.", "Good photo.")).score_images([image])[0]
    assert 0 < good < 1 and good != pytest.approx(0.5, abs=1e-4)
    assert swapped == pytest.approx(1 - good, abs=1e-6)
    assert same == pytest.approx(0.5, abs=1e-6)  # identical prompt features (up to float32 rounding)


def test_loads_from_the_hugging_face_cache_layout_only(tmp_path, tiny_clip):
    snapshot = tmp_path / "models--openai--clip-vit-base-patch32" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in tiny_clip[0].iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (tmp_path / "models--openai--clip-vit-base-patch32" / "refs").mkdir()
    (tmp_path / "models--openai--clip-vit-base-patch32" / "refs" / "main").write_text("0" * 40)
    metric = CLIPIQA.from_pretrained(DEFAULT_MODEL, cache_dir=tmp_path)
    torch.testing.assert_close(metric.prompt_features, CLIPIQA.from_pretrained(tiny_clip[0]).prompt_features)
    with pytest.raises(WeightsNotFoundError, match="openai/clip-vit-base-patch32.*nothing is downloaded"):
        CLIPIQA.from_pretrained(DEFAULT_MODEL, cache_dir=tmp_path / "empty")
    with pytest.raises(WeightsNotFoundError, match="preprocessor_config.json"):
        CLIPIQA.from_pretrained(tmp_path / "absent")
