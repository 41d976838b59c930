"""CLIP-IQA: no-reference quality from CLIP's agreement with an antonym prompt pair (higher is better).

Wang, Chan & Loy, "Exploring CLIP for Assessing the Look and Feel of Images", AAAI 2023,
https://arxiv.org/abs/2207.12396

    image feature v, prompt features t_good ("Good photo."), t_bad ("Bad photo."), all L2-normalised
    score = softmax(100 * [v . t_good, v . t_bad])[0]            in (0, 1)

Backbone: the paper and pyiqa's default `clipiqa` use CLIP ResNet-50 with its positional embedding
removed so any image size goes in; transformers does not implement CLIP ResNets. This module runs a
transformers `CLIPModel` instead, by default `openai/clip-vit-base-patch32` (as torchmetrics'
`CLIPImageQualityAssessment(model_name_or_path=...)` does), with the image resized and centre-cropped
by the model's own image processor. **Its numbers differ from pyiqa's RN50 `clipiqa`**; compare
methods with one backbone only. The model, tokenizer and `preprocessor_config.json` come from a local
folder or the Hugging Face cache (`local_files_only=True`); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from stablesr.errors import StableSRError, WeightsNotFoundError

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
QUALITY_PROMPTS = ("Good photo.", "Bad photo.")
LOGIT_SCALE = 100.0


class CLIPIQA(nn.Module):
    """CLIP-IQA score. forward(pixel_values): (B, 3, S, S) CLIP-normalised crops -> (B,) scores in (0, 1).

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
        return self(pixel_values.to(self.prompt_features.dtype)).double().numpy()


@torch.no_grad()
def text_features(clip_model: nn.Module, tokenizer, prompts: tuple[str, str]) -> torch.Tensor:
    """(positive, negative) prompts -> (2, D) L2-normalised CLIP text features."""
    tokens = tokenizer(list(prompts), padding=True, return_tensors="pt")
    text = clip_model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    features = clip_model.text_projection(text.pooler_output)  # (2, D)
    return features / features.norm(dim=-1, keepdim=True)
