"""CLIP-IQA with tiny random CLIPs built here (no downloads): the transformers ViT variant (clipiqa_vit),
then pyiqa's RN50 clipiqa / clipiqa+."""

from __future__ import annotations

import math
import string
import warnings

import numpy as np
import pytest
import torch

from conftest import FLOAT32_REL
from stablesr.errors import CheckpointMismatchError, StableSRError, WeightsNotFoundError
from stablesr.metrics.clip_resnet import AttentionPool, ClipResNet, ClipResNetConfig
from stablesr.metrics.clipiqa import (
    CLIP_PROMPT_TOKENS,
    CLIPIQA,
    DEFAULT_MODEL,
    LEARNED_PROMPTS_FILE,
    PROMPT_PAIRS,
    QUALITY_PROMPTS,
    CLIPIQAResNet,
    fixed_prompt_features,
    learned_prompt_features,
    prompt_tokens,
    score_image,
    token_rows,
)

try:
    import transformers
except ImportError:  # the transformers ViT variant (clipiqa_vit) is optional
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="clipiqa_vit needs transformers")

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


@needs_transformers
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
    np.testing.assert_allclose(scores, expected, rtol=FLOAT32_REL, atol=1e-6)
    assert scores.shape == (2,) and scores.dtype == np.float64 and abs(scores[0] - scores[1]) > 1e-4


@needs_transformers
def test_image_preprocessing_is_clip_normalisation(tiny_clip):
    folder = tiny_clip[0]
    metric = CLIPIQA.from_pretrained(folder)
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # already the model size
    pixels = (image / 255.0 - CLIP_MEAN) / CLIP_STD
    # (H, W, 3) -> (1, 3, H, W)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        direct = metric(tensor).double().numpy()
    np.testing.assert_allclose(metric.score_images([image]), direct, rtol=FLOAT32_REL, atol=1e-6)


@needs_transformers
def test_prompt_pair_identities(tiny_clip):
    folder = tiny_clip[0]
    image = np.random.default_rng(2).integers(0, 256, (36, 36, 3), dtype=np.uint8)
    good = CLIPIQA.from_pretrained(folder).score_images([image])[0]
    swapped = CLIPIQA.from_pretrained(folder, prompts=QUALITY_PROMPTS[::-1]).score_images([image])[0]
    same = CLIPIQA.from_pretrained(folder, prompts=("Good photo.", "Good photo.")).score_images([image])[0]
    assert 0 < good < 1 and good != pytest.approx(0.5, abs=1e-4)
    assert swapped == pytest.approx(1 - good, abs=1e-5)
    assert same == pytest.approx(0.5, abs=1e-5)  # identical prompt features (up to float32 rounding)


@needs_transformers
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


# ---------------------------------------------------------------------------------------------------------------
# pyiqa's clipiqa on a tiny random CLIP ResNet (no weights, no transformers needed)

def random_clip(seed: int = 0) -> ClipResNet:
    """Tiny CLIP ResNet with random weights, BatchNorm statistics included."""
    torch.manual_seed(seed)
    model = ClipResNet(ClipResNetConfig.tiny())
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "bn" in name or "downsample.1" in name:
                if name.endswith(("weight", "running_var")):
                    tensor.copy_(0.6 + 0.8 * torch.rand_like(tensor))
                elif tensor.is_floating_point():
                    tensor.copy_(0.1 * torch.randn_like(tensor))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """The tiny model traced to TorchScript and saved as RN50.pt, as OpenAI ships CLIP."""
    model = random_clip()
    folder = tmp_path_factory.mktemp("clip_rn")
    example = (torch.rand(1, 3, 40, 40), prompt_tokens(["Good image"], 77))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; RN50.pt is TorchScript
        torch.jit.trace(model, example).save(str(folder / "RN50.pt"))
    return folder, model


def reference_attention_pool(pool: AttentionPool, features: torch.Tensor) -> torch.Tensor:
    """The pooling written out per head: softmax(q . k_i / sqrt(d)) over [mean, positions], weighted v."""
    batch, channels = features.shape[:2]
    tokens = features.reshape(batch, channels, -1)  # (B, C, H, W) -> (B, C, HW)
    tokens = torch.cat([tokens.mean(dim=2, keepdim=True), tokens], dim=2)  # (B, C, 1 + HW)
    query = pool.q_proj.weight @ tokens[:, :, 0:1] + pool.q_proj.bias[:, None]  # (B, C, 1)
    key = pool.k_proj.weight @ tokens + pool.k_proj.bias[:, None]
    value = pool.v_proj.weight @ tokens + pool.v_proj.bias[:, None]
    head = channels // pool.heads
    outputs = []
    for h in range(pool.heads):
        rows = slice(h * head, (h + 1) * head)
        weights = torch.softmax((query[:, rows] * key[:, rows]).sum(dim=1) / math.sqrt(head), dim=-1)  # (B, 1 + HW)
        outputs.append((value[:, rows] * weights[:, None]).sum(dim=2))
    return torch.cat(outputs, dim=1) @ pool.c_proj.weight.T + pool.c_proj.bias


def test_attention_pool_matches_the_formula_and_ignores_its_positional_embedding():
    torch.manual_seed(1)
    pool = AttentionPool(channels=12, heads=3, output_dim=5, grid=2).double()
    features = torch.randn(2, 12, 3, 5, dtype=torch.float64)
    pooled = pool(features)
    torch.testing.assert_close(pooled, reference_attention_pool(pool, features), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        pool.positional_embedding.normal_()
    torch.testing.assert_close(pool(features), pooled, rtol=0, atol=0)
    assert pooled.shape == (2, 5)


def reference_text_features(model: ClipResNet, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower written out: causal pre-LN blocks with explicit softmax, QuickGELU, EOT state."""
    x = model.token_embedding.weight[tokens] + model.positional_embedding[: tokens.shape[1]]
    length, width = tokens.shape[1], x.shape[-1]
    heads = width // 64
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    for block in model.transformer.resblocks:
        h = torch.nn.functional.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias)
        q, k, v = (h @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
        split = [t.reshape(*t.shape[:2], heads, width // heads).transpose(1, 2) for t in (q, k, v)]
        scores = (split[0] @ split[1].transpose(-1, -2) / math.sqrt(width // heads)).masked_fill(future, -math.inf)
        attended = (scores.softmax(dim=-1) @ split[2]).transpose(1, 2).reshape(x.shape)
        x = x + attended @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
        h = torch.nn.functional.layer_norm(x, (width,), block.ln_2.weight, block.ln_2.bias)
        h = block.mlp.c_fc(h)
        x = x + block.mlp.c_proj(h * torch.sigmoid(1.702 * h))
    x = torch.nn.functional.layer_norm(x, (width,), model.ln_final.weight, model.ln_final.bias)
    end = [int(row.tolist().index(49407)) for row in tokens]
    return torch.stack([x[row, position] for row, position in enumerate(end)]) @ model.text_projection


def test_text_tower_pools_the_end_token_under_a_causal_mask():
    model = random_clip().double()
    tokens = prompt_tokens(["Noise-free image", "bad image", "High resolution image"], 77)
    features = model.encode_text(tokens)
    torch.testing.assert_close(features, reference_text_features(model, tokens), rtol=1e-10, atol=1e-10)
    padded = tokens.clone()
    padded[:, 10:] = 7  # whatever follows the end token is masked out
    torch.testing.assert_close(model.encode_text(padded), features, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(model.encode_text(prompt_tokens(["Good image"], 77)), features[1:2])


def test_prompt_tokens_are_clip_tokenize_rows():
    tokens = prompt_tokens(["Good image", "Noise-free image"], 77)
    assert tokens[0, :4].tolist() == [49406, 886, 2867, 49407] and tokens[1, :6].tolist() == [49406, 9307, 268, 1139,
                                                                                                 2867, 49407]
    assert tokens.shape == (2, 77) and tokens[:, 6:].abs().sum() == 0
    assert tokens.argmax(dim=-1).tolist() == [3, 5]
    # lower-cased BPE: a word has one id whatever prompt or case it comes in
    image_ids = {ids[-1] for text, ids in CLIP_PROMPT_TOKENS.items() if text.endswith("image")}
    assert image_ids == {2867} and CLIP_PROMPT_TOKENS["Good image"][0] == CLIP_PROMPT_TOKENS["Good photo."][0]
    assert CLIP_PROMPT_TOKENS["Sharp image"][0] == CLIP_PROMPT_TOKENS["sharp edges"][0]
    assert all(text in CLIP_PROMPT_TOKENS for pairs in PROMPT_PAIRS.values() for pair in pairs for text in pair)


def direct_score(model: ClipResNet, pixels: torch.Tensor, prompts: str) -> torch.Tensor:
    """mean over pairs of softmax(s [cos+, cos-])[0] = sigmoid(s (cos+ - cos-)), s = exp(logit_scale)."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=pixels.dtype).view(1, 3, 1, 1)
    image = model.encode_image((pixels - mean) / std)
    image = image / image.norm(dim=-1, keepdim=True)
    scale = model.logit_scale.exp()
    scores = []
    for positive, negative in PROMPT_PAIRS[prompts]:
        text = model.encode_text(prompt_tokens([positive, negative], 77))
        text = text / text.norm(dim=-1, keepdim=True)
        scores.append(torch.sigmoid(scale * (image @ text[0] - image @ text[1])))
    return torch.stack(scores).mean(dim=0)


@pytest.mark.parametrize("prompts", ["pyiqa", "paper"])
def test_score_is_the_mean_pair_softmax_of_scaled_cosines(prompts):
    model = random_clip().double()
    metric = CLIPIQAResNet(model, fixed_prompt_features(model, prompts))
    pixels = torch.rand(2, 3, 45, 77, dtype=torch.float64)
    scores = metric(pixels)
    torch.testing.assert_close(scores, direct_score(model, pixels, prompts), rtol=1e-10, atol=1e-12)
    assert scores.shape == (2,) and abs(float(scores[0] - scores[1])) > 1e-6
    if prompts == "paper":  # CLIP's own forward gives the pair's logits: score = softmax(logits)[0]
        logits = model((pixels - metric.mean) / metric.std, prompt_tokens(["Good photo.", "Bad photo."], 77))
        torch.testing.assert_close(scores, logits.softmax(dim=-1)[:, 0], rtol=1e-12, atol=1e-12)


def test_swapping_each_prompt_pair_gives_one_minus_the_score():
    model = random_clip().double()
    features = fixed_prompt_features(model, "pyiqa")  # (10, D): rows positive, negative per pair
    swapped = features.view(5, 2, -1).flip(1).reshape(10, -1)
    pixels = torch.rand(3, 3, 40, 33, dtype=torch.float64)
    scores = CLIPIQAResNet(model, features)(pixels)
    torch.testing.assert_close(CLIPIQAResNet(model, swapped)(pixels), 1 - scores, rtol=0, atol=1e-12)
    same = features.view(5, 2, -1)[:, :1].expand(5, 2, -1).reshape(10, -1)
    torch.testing.assert_close(CLIPIQAResNet(model, same)(pixels), torch.full_like(scores, 0.5), rtol=0, atol=1e-12)


def test_learned_prompts_equal_a_text_whose_words_sit_where_the_context_goes():
    """If the 16 context vectors are the embeddings of 16 words, clipiqa+ is CLIP on the plain token row."""
    model = random_clip().double()
    words = torch.arange(1000, 1032).view(2, 16)  # per-class context: 16 word ids for each prompt
    features = learned_prompt_features(model, model.token_embedding(words))
    rows = [[*words[c, :8].tolist(), *class_ids, *words[c, 8:].tolist()]
            for c, class_ids in enumerate(([886, 1125, 852], [2103, 1125, 852]))]
    expected = model.encode_text(token_rows(rows, 77))
    torch.testing.assert_close(features, expected / expected.norm(dim=-1, keepdim=True), rtol=1e-10, atol=1e-12)
    shared = learned_prompt_features(model, model.token_embedding(words[0]))  # one context for both classes
    torch.testing.assert_close(shared[0], features[0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(shared[1], features[1])


def test_torchscript_rn50_file_loads_back_exactly(clip_file, tmp_path, monkeypatch):
    folder, model = clip_file
    metric = CLIPIQAResNet.from_file(folder / "RN50.pt")
    for name, tensor in model.state_dict().items():
        assert torch.equal(metric.clip_model.state_dict()[name], tensor), name
    assert metric.clip_model.config == ClipResNetConfig.tiny()
    image = np.random.default_rng(3).integers(0, 256, (52, 70, 3), dtype=np.uint8)
    direct = CLIPIQAResNet(model, fixed_prompt_features(model, "pyiqa"))
    # (H, W, 3) uint8 -> (1, 3, H, W) in [0, 1]
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    assert score_image(metric, image) == float(direct(pixels)[0])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # pyiqa's cache: $TORCH_HOME/hub/clip/RN50.pt
    (tmp_path / "hub" / "clip").mkdir(parents=True)
    (tmp_path / "hub" / "clip" / "RN50.pt").write_bytes((folder / "RN50.pt").read_bytes())
    assert score_image(CLIPIQAResNet.from_file(), image) == score_image(metric, image)


def test_state_dict_files_and_learned_prompt_files(clip_file, tmp_path):
    from safetensors.torch import save_file

    folder, model = clip_file
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, tmp_path / "clip.safetensors")
    image = np.random.default_rng(4).integers(0, 256, (31, 64, 3), dtype=np.uint8)
    assert score_image(CLIPIQAResNet.from_file(tmp_path / "clip.safetensors"), image) == score_image(
        CLIPIQAResNet.from_file(folder), image)
    context = 0.02 * torch.randn(2, 16, 64)
    torch.save(context, tmp_path / LEARNED_PROMPTS_FILE)
    plus = CLIPIQAResNet.from_files_learned(folder, learned_prompts_path=tmp_path)
    torch.testing.assert_close(plus.prompt_features, learned_prompt_features(model, context), rtol=0, atol=0)
    torch.save(torch.zeros(16, 65), tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match=r"\(16, 64\) or \(2, 16, 64\)"):
        CLIPIQAResNet.from_files_learned(folder, learned_prompts_path=tmp_path / "bad.pth")


def test_missing_files_name_the_file_and_the_caches(tmp_path, monkeypatch, clip_file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(WeightsNotFoundError, match=r"RN50\.pt.*torch/hub/clip or .*home/\.cache/clip.*nothing is"):
        CLIPIQAResNet.from_file()
    with pytest.raises(WeightsNotFoundError, match=r"CLIP-IQA\+_learned_prompts-603f3273\.pth.*torch/hub/pyiqa"):
        CLIPIQAResNet.from_files_learned(clip_file[0])
    (tmp_path / "home" / ".cache" / "clip").mkdir(parents=True)  # the `clip` package's own cache
    (tmp_path / "home" / ".cache" / "clip" / "RN50.pt").write_bytes((clip_file[0] / "RN50.pt").read_bytes())
    assert CLIPIQAResNet.from_file().clip_model.config == ClipResNetConfig.tiny()


def test_wrong_keys_raise_checkpoint_mismatch(clip_file, tmp_path):
    state = dict(clip_file[1].state_dict())
    state["visual.attnpool.query.weight"] = state.pop("visual.attnpool.q_proj.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointMismatchError, match=r"missing \['visual\.attnpool\.q_proj\.weight'\].*unexpected"):
        CLIPIQAResNet.from_file(tmp_path / "renamed.pt")
    torch.save({"visual.proj": torch.zeros(2, 2), "visual.conv1.weight": torch.zeros(1)}, tmp_path / "vit.pt")
    with pytest.raises(CheckpointMismatchError, match="CLIP ViT, not a CLIP ResNet"):
        CLIPIQAResNet.from_file(tmp_path / "vit.pt")


def test_score_image_checks_its_input(clip_file):
    metric = CLIPIQAResNet.from_file(clip_file[0])
    assert 0 < score_image(metric, np.zeros((31, 31, 3), dtype=np.uint8)) < 1  # the smallest size that fits
    for bad in (np.zeros((30, 64, 3), np.uint8), np.zeros((64, 64, 3), np.float32), np.zeros((64, 64), np.uint8)):
        with pytest.raises(StableSRError, match=r"\(H, W, 3\) uint8 RGB image with H, W >= 31"):
            score_image(metric, bad)
