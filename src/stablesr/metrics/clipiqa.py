"""CLIP-IQA: no-reference quality from CLIP's agreement with antonym prompt pairs (higher is better).

Wang, Chan & Loy, "Exploring CLIP for Assessing the Look and Feel of Images", AAAI 2023,
https://arxiv.org/abs/2207.12396

    image feature v, prompt features t_pos, t_neg of each pair p = 1..P, all L2-normalised
    s = exp(logit_scale)  (100 for the released CLIP weights)
    score = 1/P sum_p softmax(s * [v . t_pos_p, v . t_neg_p])[0]            in (0, 1)

Two backbones, whose numbers differ (compare methods with one of them only):

`CLIPIQAResNet` (metric `clipiqa`) is pyiqa's default `clipiqa`, the one SR papers report: OpenAI CLIP RN50
(`RN50.pt`, see `clip_resnet.py`) on the whole image at its own size, pixels in [0, 1] normalised with CLIP's
mean / std, no resize, the attention pool without its positional embedding, and pyiqa's five prompt pairs
("Good image" / "bad image", ... , since pyiqa 0.1.6; the paper's single pair "Good photo." / "Bad photo." is
`prompts="paper"`). `CLIPIQAResNet.from_files_learned` is pyiqa's `clipiqa+`: the same RN50 with the
learned prompt context `CLIP-IQA+_learned_prompts-603f3273.pth` (pyiqa's cache `$TORCH_HOME/hub/pyiqa/`).

`CLIPIQA` (metric `clipiqa_vit`) runs a transformers `CLIPModel`, by default `openai/clip-vit-base-patch32`
(as torchmetrics' `CLIPImageQualityAssessment(model_name_or_path=...)` does) with the single pair
"Good photo." / "Bad photo.", the image resized and centre-cropped by the model's own image processor; the
model, tokenizer and `preprocessor_config.json` come from a local folder or the Hugging Face cache
(`local_files_only=True`). Nothing is downloaded by either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stablesr.errors import CheckpointMismatchError, StableSRError, WeightsNotFoundError
from stablesr.metrics.clip_resnet import (
    ClipResNet,
    clip_resnet_from_state,
    load_clip_state,
)
from stablesr.weights.cache import find_weights

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
QUALITY_PROMPTS = ("Good photo.", "Bad photo.")
LOGIT_SCALE = 100.0


class CLIPIQA(nn.Module):
    """CLIP-IQA on a transformers CLIP ViT (metric `clipiqa_vit`).

    forward(pixel_values): (B, 3, S, S) CLIP-normalised crops -> (B,) scores in (0, 1).

    `prompt_features` (2, D) are the normalised text features of the (positive, negative) prompts;
    `image_processor` is the CLIP image processor that `score_images` uses (resize, centre crop, normalise).
    """

    def __init__(self, clip_model: nn.Module, prompt_features: torch.Tensor, image_processor) -> None:
        super().__init__()
        self.clip_model = clip_model
        self.image_processor = image_processor
        self.register_buffer("prompt_features", prompt_features, persistent=False)

    @classmethod
    def from_pretrained(cls, model: str | Path = DEFAULT_MODEL, *, prompts: tuple[str, str] = QUALITY_PROMPTS,
                        cache_dir: str | Path | None = None) -> CLIPIQA:
        """Load CLIP from a local folder or the Hugging Face cache; `prompts` = (positive, negative)."""
        try:
            from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
        except ImportError as error:
            raise StableSRError("CLIP-IQA needs transformers: pip install 'stablesr[prompts]'") from error

        try:
            clip_model = CLIPModel.from_pretrained(model, local_files_only=True, cache_dir=cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True, cache_dir=cache_dir)
            image_processor = AutoImageProcessor.from_pretrained(model, local_files_only=True, cache_dir=cache_dir)
        except OSError as error:
            raise WeightsNotFoundError(
                f"CLIP-IQA needs the CLIP model {model} (config.json, model.safetensors, tokenizer files and "
                f"preprocessor_config.json) in a local folder or the Hugging Face cache; fetch it once with "
                f"`hf download {DEFAULT_MODEL}` (nothing is downloaded at run time)"
            ) from error
        clip_model = clip_model.eval().requires_grad_(False)
        return cls(clip_model, text_features(clip_model, tokenizer, prompts), image_processor)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision = self.clip_model.vision_model(pixel_values=pixel_values)
        image_features = self.clip_model.visual_projection(vision.pooler_output)  # (B, D)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        logits = LOGIT_SCALE * image_features @ self.prompt_features.T  # (B, D) @ (D, 2) -> (B, 2)
        return logits.softmax(dim=-1)[:, 0]

    @torch.no_grad()
    def score_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 RGB images (any sizes) -> (N,) float64 scores, via the model's image processor."""
        pixel_values = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return self(pixel_values.to(self.prompt_features.device, self.prompt_features.dtype)).double().cpu().numpy()


@torch.no_grad()
def text_features(clip_model: nn.Module, tokenizer, prompts: tuple[str, str]) -> torch.Tensor:
    """(positive, negative) prompts -> (2, D) L2-normalised CLIP text features."""
    tokens = tokenizer(list(prompts), padding=True, return_tensors="pt")
    text = clip_model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    features = clip_model.text_projection(text.pooler_output)  # (2, D)
    return features / features.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------------------------
# pyiqa's `clipiqa` / `clipiqa+` on OpenAI CLIP RN50

PromptSet = Literal["pyiqa", "paper"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
START_TOKEN, END_TOKEN = 49406, 49407
MIN_IMAGE_SIDE = 31  # the RN50 tower shrinks a side by 32 (stem /4 rounding up once, then /2 three times)

# (positive, negative) prompt pairs: "pyiqa" is `clipiqa` in every pyiqa release that has it (0.1.6 on),
# "paper" the paper's single pair.
PROMPT_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "pyiqa": (("Good image", "bad image"), ("Sharp image", "blurry image"), ("sharp edges", "blurry edges"),
              ("High resolution image", "low resolution image"), ("Noise-free image", "noisy image")),
    "paper": (("Good photo.", "Bad photo."),),
}

# CLIP BPE ids (between start and end) of the prompts, so no 1.6 MB vocabulary ships. Derived with the `clip`
# package's SimpleTokenizer and bpe_simple_vocab_16e6 (lower-cased; check: 'a photo' -> [320, 1125]).
CLIP_PROMPT_TOKENS: dict[str, list[int]] = {
    "Good image": [886, 2867], "bad image": [2103, 2867],
    "Sharp image": [8157, 2867], "blurry image": [21977, 2867],
    "sharp edges": [8157, 20938], "blurry edges": [21977, 20938],
    "High resolution image": [1400, 9977, 2867], "low resolution image": [1042, 9977, 2867],
    "Noise-free image": [9307, 268, 1139, 2867], "noisy image": [33495, 2867],
    "Good photo.": [886, 1125, 269], "Bad photo.": [2103, 1125, 269],
}

# clipiqa+ (CoOp-style prompt learning): 16 learned context vectors, the first 8 before and the last 8 after
# the words of 'X X ... X Good photo..' / '... Bad photo..' ('photo..' is BPE 'photo</w>', '..</w>').
LEARNED_PROMPTS_FILE = "CLIP-IQA+_learned_prompts-603f3273.pth"
LEARNED_CONTEXT_LENGTH = 16
LEARNED_CLASS_TOKENS = ([886, 1125, 852], [2103, 1125, 852])  # 'good', 'photo', '..' / 'bad', 'photo', '..'
PLACEHOLDER_TOKEN = 343  # 'x': stands where the learned vectors go


def prompt_tokens(texts: list[str], context_length: int) -> torch.Tensor:
    """Known prompts -> (N, context_length) int64 rows [start, ids, end, 0, 0, ...] (`clip.tokenize`)."""
    return token_rows([CLIP_PROMPT_TOKENS[text] for text in texts], context_length)


def token_rows(id_lists: list[list[int]], context_length: int) -> torch.Tensor:
    tokens = torch.zeros(len(id_lists), context_length, dtype=torch.long)
    for row, ids in enumerate(id_lists):
        tokens[row, : len(ids) + 2] = torch.tensor([START_TOKEN, *ids, END_TOKEN])
    return tokens


@torch.no_grad()
def fixed_prompt_features(clip_model: ClipResNet, prompts: PromptSet) -> torch.Tensor:
    """The prompt pairs' text features, L2-normalised: (2P, D), rows positive_1, negative_1, positive_2, ..."""
    texts = [text for pair in PROMPT_PAIRS[prompts] for text in pair]
    tokens = prompt_tokens(texts, clip_model.config.context_length)
    return F.normalize(clip_model.encode_text(tokens), dim=-1)


@torch.no_grad()
def learned_prompt_features(clip_model: ClipResNet, context: torch.Tensor) -> torch.Tensor:
    """clipiqa+ text features (2, D), L2-normalised, from learned context (16, width) or (2, 16, width).

    Sequence per prompt: [start, context[:8], class words (3), context[8:], end, padding].
    """
    context = context.expand(2, *context.shape[-2:])  # shared or per-class context -> (2, 16, width)
    ids = [[PLACEHOLDER_TOKEN] * LEARNED_CONTEXT_LENGTH + class_ids for class_ids in LEARNED_CLASS_TOKENS]
    tokens = token_rows(ids, clip_model.config.context_length)
    embeddings = clip_model.token_embedding(tokens)  # (2, L, width)
    words = slice(1 + LEARNED_CONTEXT_LENGTH, 1 + LEARNED_CONTEXT_LENGTH + 3)
    half = LEARNED_CONTEXT_LENGTH // 2
    embeddings = torch.cat([embeddings[:, :1], context[:, :half], embeddings[:, words], context[:, half:],
                            embeddings[:, words.stop:]], dim=1)  # same length, end token at the same place
    return F.normalize(clip_model.encode_token_embeddings(embeddings, tokens.argmax(dim=-1)), dim=-1)


def find_learned_prompts(path: str | Path | None = None) -> Path:
    """`CLIP-IQA+_learned_prompts-603f3273.pth`: `path` (file or folder), else pyiqa's hub cache (weights/cache.py)."""
    return find_weights(LEARNED_PROMPTS_FILE, path, cache="pyiqa", needed_by="CLIP-IQA+ needs pyiqa's learned prompts")


def load_learned_context(path: str | Path | None, width: int) -> torch.Tensor:
    """The learned context tensor, (16, width) or (2, 16, width), as float32."""
    file = find_learned_prompts(path)
    context = torch.load(file, map_location="cpu", weights_only=True)  # a bare tensor; no code runs
    shapes = ((LEARNED_CONTEXT_LENGTH, width), (2, LEARNED_CONTEXT_LENGTH, width))
    if not isinstance(context, torch.Tensor) or tuple(context.shape) not in shapes:
        found = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise CheckpointMismatchError(f"{file} should hold a tensor of shape {shapes[0]} or {shapes[1]}, not {found}")
    return context.float()


class CLIPIQAResNet(nn.Module):
    """pyiqa's `clipiqa` (or `clipiqa+`). forward(image): (B, 3, H, W) RGB in [0, 1], H, W >= 31 -> (B,) scores.

    `prompt_features` (2P, D): normalised text features, rows (positive, negative) per pair.
    """

    def __init__(self, clip_model: ClipResNet, prompt_features: torch.Tensor) -> None:
        super().__init__()
        self.clip_model = clip_model
        self.register_buffer("prompt_features", prompt_features, persistent=False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | Path | None = None, *, prompts: PromptSet = "pyiqa") -> CLIPIQAResNet:
        """`clipiqa`: `RN50.pt` from `path` or the caches (see `clip_resnet.find_clip_file`)."""
        clip_model = clip_resnet_from_state(load_clip_state(path))
        return cls(clip_model, fixed_prompt_features(clip_model, prompts))

    @classmethod
    def from_files_learned(cls, path: str | Path | None = None, *,
                           learned_prompts_path: str | Path | None = None) -> CLIPIQAResNet:
        """`clipiqa+`: `RN50.pt` as in `from_file`, plus pyiqa's learned prompt context (see `find_learned_prompts`)."""
        clip_model = clip_resnet_from_state(load_clip_state(path))
        context = load_learned_context(learned_prompts_path, clip_model.config.text_width)
        return cls(clip_model, learned_prompt_features(clip_model, context))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image_features = F.normalize(self.clip_model.encode_image((image - self.mean) / self.std), dim=-1)
        logits = self.clip_model.logit_scale.exp() * image_features @ self.prompt_features.T  # (B, 2P)
        pairs = logits.view(logits.shape[0], -1, 2)  # (B, 2P) -> (B, P, 2): (positive, negative) per pair
        return pairs.softmax(dim=-1)[..., 0].mean(dim=1)


@torch.no_grad()
def score_image(model: CLIPIQAResNet, image: np.ndarray) -> float:
    """CLIP-IQA of one (H, W, 3) uint8 RGB image of any size (both sides >= 31), whole image, no resize."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise StableSRError(f"CLIP-IQA needs an (H, W, 3) uint8 RGB image with H, W >= {MIN_IMAGE_SIDE}, "
                            f"got {image.dtype} {image.shape}")
    # (H, W, 3) uint8 -> (1, 3, H, W) in [0, 1]
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255  # a copy: inputs may be read-only
    return float(model(pixels.to(model.prompt_features.device))[0])
