"""OpenCLIP text tower as Stable Diffusion 2.x uses it, and the cached prompt embeddings.

SD 2.x conditions on the *penultimate* layer of OpenCLIP ViT-H/14's text transformer followed by
`ln_final` (Radford et al. 2021, https://arxiv.org/abs/2103.00020; Cherti et al. 2023,
https://arxiv.org/abs/2212.07143). StableSR always uses the empty prompt, so the (1, 77, 1024)
embedding of '' is computed once (at `convert` time) and cached in `PromptEmbeddings`; the text
tower is only needed for custom prompts.

Parameter names follow the official checkpoint (`cond_stage_model.model.*` minus the prefix), so
those weights load without renaming.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

START_TOKEN = 49406
END_TOKEN = 49407

# The strings of the official DDIM scripts (`--use_negative_prompt`, `--use_posi_prompt`), passed
# literally to OpenCLIP (no A1111 weight parsing).
OFFICIAL_NEGATIVE_PROMPT = "3d, cartoon, anime, sketches, (worst quality:2), (low quality:2)"
OFFICIAL_POSITIVE_PROMPT = "(masterpiece:2), (best quality:2), (realistic:2), (very clear:2)"


# OpenCLIP BPE token ids (between start and end) of the fixed prompts, so their embeddings can be
# cached from an official checkpoint without shipping the 1.4 MB vocabulary. Derived with the CLIP
# BPE vocabulary (bpe_simple_vocab_16e6); check: 'a photo' -> [320, 1125].
KNOWN_PROMPT_TOKENS: dict[str, list[int]] = {
    "": [],
    OFFICIAL_NEGATIVE_PROMPT: [274, 323, 267, 7651, 267, 6469, 267, 17622, 267, 263, 5719, 3027, 281, 273, 2361,
                               263, 1042, 3027, 281, 273, 264],
    OFFICIAL_POSITIVE_PROMPT: [263, 12066, 281, 273, 2361, 263, 949, 3027, 281, 273, 2361, 263, 16157, 281, 273,
                               2361, 263, 1070, 3143, 281, 273, 264],
}


def known_prompt_tokens(text: str, context_length: int = 77) -> torch.Tensor | None:
    """OpenCLIP token ids of a prompt in KNOWN_PROMPT_TOKENS -> (1, context_length) int64
    ([start, ..., end, 0, 0, ...], OpenCLIP's zero padding), or None for any other text."""
    if text not in KNOWN_PROMPT_TOKENS:
        return None
    ids = [START_TOKEN, *KNOWN_PROMPT_TOKENS[text], END_TOKEN]
    tokens = torch.zeros(1, context_length, dtype=torch.long)
    tokens[0, : len(ids)] = torch.tensor(ids)
    return tokens


def empty_prompt_tokens(context_length: int = 77) -> torch.Tensor:
    """OpenCLIP token ids of '' : [start, end, 0, 0, ...] -> (1, context_length) int64 (no vocabulary needed)."""
    return known_prompt_tokens("", context_length)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), OpenAI CLIP's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}  # OpenCLIP ViT-H/14 : OpenAI CLIP


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = ACTIVATIONS[activation]()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); causal mask. (B, L, W) -> (B, L, W)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio), activation)

    def forward(self, x: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=causal_mask)[0]
        return x + self.mlp(self.ln_2(x))


class TransformerStack(nn.Module):
    """CLIP's causal text transformer (OpenAI and OpenCLIP share it; the `resblocks.N` key layout of both)."""

    def __init__(self, width: int, layers: int, heads: int, activation: str = "gelu") -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, activation=activation)
                                       for _ in range(layers))

    def forward(self, x: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """(B, L, W) -> the hidden states after the first `layers` blocks (all by default), (B, L, W)."""
        length = x.shape[1]
        causal_mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        for block in self.resblocks[:layers]:
            x = block(x, causal_mask)
        return x


class OpenCLIPTextEncoder(ModelMixin, ConfigMixin):
    """OpenCLIP text transformer; returns the hidden states of layer `layers - skip_last_layers`, then ln_final.

    forward: token ids (B, L) int64 -> (B, L, width). SD 2.x: width 1024, 24 layers, 16 heads, skip 1.
    """

    @register_to_config
    def __init__(self, *, vocab_size: int = 49408, context_length: int = 77, width: int = 1024, layers: int = 24,
                 heads: int = 16, embed_dim: int = 1024, skip_last_layers: int = 1) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width).normal_(std=0.01))
        self.transformer = TransformerStack(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        # Kept so the official weights load strictly; unused for SD conditioning.
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim).normal_(std=width**-0.5))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]  # (B, L, width)
        used = len(self.transformer.resblocks) - self.config.skip_last_layers
        return self.ln_final(self.transformer(x, used))


class PromptEmbeddings(ModelMixin, ConfigMixin):
    """Cached text embeddings, saved beside the weights: `null` ('' , always), and optionally
    `negative` / `positive` (the official DDIM-script prompts, when a tokenizer was available).

    Each buffer is (1, 77, D). `prompts` in the config records the text of every entry.
    """

    @register_to_config
    def __init__(
        self, *, prompts: dict[str, str] | None = None, context_length: int = 77, embed_dim: int = 1024
    ) -> None:
        super().__init__()
        for name in (prompts or {"null": ""}):
            self.register_buffer(name, torch.zeros(1, context_length, embed_dim))

    @classmethod
    def from_tensors(cls, embeddings: dict[str, torch.Tensor], prompts: dict[str, str]) -> PromptEmbeddings:
        first = next(iter(embeddings.values()))
        module = cls(prompts=prompts, context_length=first.shape[1], embed_dim=first.shape[2])
        for name, value in embeddings.items():
            getattr(module, name).copy_(value)
        return module

    def get(self, name: str) -> torch.Tensor | None:
        return getattr(self, name) if name in self.config.prompts else None

    def find(self, text: str) -> torch.Tensor | None:
        """The cached embedding of exactly this prompt text, if any."""
        for name, cached_text in self.config.prompts.items():
            if cached_text == text:
                return getattr(self, name)
        return None
