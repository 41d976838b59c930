"""OpenAI CLIP ResNet (RN50): image tower, text tower and the file reader, in the `RN50.pt` key layout.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021,
https://arxiv.org/abs/2103.00020 (image tower: the "modified ResNet" of section 2.4)

    image tower: 3-conv stem (stride 2, then 1, 1) -> 2x2 avg pool -> 4 bottleneck stages (x1, /2, /2, /2),
                 strided blocks downsample with an avg pool (anti-aliased) instead of a strided conv
                 -> attention pool: tokens = [mean(f), f_1 .. f_HW], pooled = MHA(q = W_q mean(f), K, V)[0]
    text tower:  token embedding + positional embedding -> pre-LN transformer (causal mask, QuickGELU)
                 -> ln_final -> the end-of-text token's state @ text_projection
    logits = exp(logit_scale) * cos(image feature, text feature)

The attention pool here never adds its positional embedding (kept only so the file loads strictly): that is
how pyiqa's `clipiqa` feeds images of any size. Parameter names are those of the checkpoint (`visual.*`,
`transformer.*`, `token_embedding`, `positional_embedding`, `ln_final`, `text_projection`, `logit_scale`).
`RN50.pt` (a TorchScript archive) is read from a path you give, `$TORCH_HOME/hub/clip/` (pyiqa's cache) or
`~/.cache/clip/` (the `clip` package's) and never downloaded.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stablesr.errors import CheckpointMismatchError
from stablesr.models.text_encoder import TransformerStack
from stablesr.weights.cache import find_weights
from stablesr.weights.io import load_state_dict

WEIGHTS_FILE = "RN50.pt"
HEAD_WIDTH = 64  # CLIP sizes every attention head at 64 channels
# Scalars the TorchScript archive may carry beside the weights.
ARCHIVE_SCALARS = ("input_resolution", "context_length", "vocab_size")
# The tensors whose shapes give the model's sizes.
SIZE_KEYS = ("visual.layer1.0.conv1.weight", "visual.attnpool.positional_embedding", "text_projection",
             "positional_embedding", "token_embedding.weight", "ln_final.weight")


@dataclass(frozen=True)
class ClipResNetConfig:
    """Sizes of a CLIP ResNet; the defaults are RN50. Heads follow CLIP's 64 channels per head."""

    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    vision_width: int = 64
    pool_grid: int = 7  # input_resolution // 32: sizes the (unused) attention-pool positional embedding
    embed_dim: int = 1024
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12

    @property
    def pooled_channels(self) -> int:
        return self.vision_width * 32

    @property
    def vision_heads(self) -> int:
        return self.pooled_channels // HEAD_WIDTH

    @property
    def text_heads(self) -> int:
        return self.text_width // HEAD_WIDTH

    @classmethod
    def tiny(cls) -> ClipResNetConfig:
        """A CPU-test size: one block per stage, 4 pooling heads, 1 text head, the real vocabulary."""
        return cls(vision_layers=(1, 1, 1, 1), vision_width=8, pool_grid=1, embed_dim=32, context_length=77,
                   text_width=64, text_layers=2)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> ClipResNetConfig:
        """Read the sizes off a checkpoint's tensor shapes (as CLIP's own loader does)."""
        def block_count(stage: int) -> int:
            return len({key.split(".")[2] for key in state if key.startswith(f"visual.layer{stage}.")})

        text_layers = len({key.split(".")[2] for key in state if key.startswith("transformer.resblocks.")})
        return cls(
            vision_layers=tuple(block_count(stage) for stage in (1, 2, 3, 4)),
            vision_width=state["visual.layer1.0.conv1.weight"].shape[0],
            pool_grid=round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5),
            embed_dim=state["text_projection"].shape[1],
            context_length=state["positional_embedding"].shape[0],
            vocab_size=state["token_embedding.weight"].shape[0],
            text_width=state["ln_final.weight"].shape[0],
            text_layers=text_layers,
        )


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avg pool if strided) -> 1x1 (4x channels), plus a shortcut: (B, C, H, W) -> (B, 4P, H/s, W/s).

    The shortcut, when the shape changes, is avg pool -> 1x1 conv -> BN (keys `downsample.0`, `downsample.1`).
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, planes, 1)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.conv3, self.bn3 = conv_bn(planes, planes * 4, 1)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.downsample = None
        if stride > 1 or in_channels != planes * 4:
            self.downsample = nn.Sequential(*conv_bn(in_channels, planes * 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.pool(F.relu(self.bn2(self.conv2(h))))
        h = self.bn3(self.conv3(h))
        shortcut = x if self.downsample is None else self.downsample(self.pool(x))
        return F.relu(h + shortcut)


class AttentionPool(nn.Module):
    """Multi-head attention of the mean token over [mean, all positions]: (B, C, H, W) -> (B, output_dim).

    `positional_embedding` (grid^2 + 1, C) is loaded but not added, so any H, W go in (pyiqa's `clipiqa`).
    """

    def __init__(self, channels: int, heads: int, output_dim: int, grid: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, channels))
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.c_proj = nn.Linear(channels, output_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, channels = x.shape
        # (B, L, C) -> (B, heads, L, C / heads)
        return x.view(batch, length, self.heads, channels // self.heads).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, 1 + HW, C)
        query = self.split_heads(self.q_proj(tokens[:, :1]))  # only the mean token's output is kept
        key, value = self.split_heads(self.k_proj(tokens)), self.split_heads(self.v_proj(tokens))
        pooled = F.scaled_dot_product_attention(query, key, value)  # (B, heads, 1, C / heads)
        pooled = pooled.transpose(1, 2).flatten(2)  # (B, heads, 1, C / heads) -> (B, 1, C)
        return self.c_proj(pooled[:, 0])


class ImageTower(nn.Module):
    """CLIP's modified ResNet. forward: (B, 3, H, W) CLIP-normalised, H, W >= 31 -> (B, embed_dim)."""

    def __init__(self, config: ClipResNetConfig) -> None:
        super().__init__()
        width = config.vision_width
        self.conv1, self.bn1 = conv_bn(3, width // 2, 3, stride=2)
        self.conv2, self.bn2 = conv_bn(width // 2, width // 2, 3)
        self.conv3, self.bn3 = conv_bn(width // 2, width, 3)
        in_channels = width
        for stage, blocks in enumerate(config.vision_layers):
            planes = width * 2**stage
            stride = 1 if stage == 0 else 2
            blocks_of_stage = [Bottleneck(in_channels, planes, stride)]
            blocks_of_stage += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks_of_stage))
            in_channels = planes * 4
        self.attnpool = AttentionPool(in_channels, config.vision_heads, config.embed_dim, config.pool_grid)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = image
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            h = F.relu(bn(conv(h)))
        h = F.avg_pool2d(h, 2)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            h = layer(h)
        return self.attnpool(h)  # (B, 32 * width, H / 32, W / 32) -> (B, embed_dim)


class ClipResNet(nn.Module):
    """CLIP with a ResNet image tower. forward(image (B, 3, H, W), tokens (P, L) int64) -> logits (B, P).

    logits = exp(logit_scale) * normalised image features @ normalised text features^T.
    """

    def __init__(self, config: ClipResNetConfig = ClipResNetConfig()) -> None:
        super().__init__()
        self.config = config
        self.visual = ImageTower(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        text_positions = torch.empty(config.context_length, config.text_width).normal_(std=0.01)
        self.positional_embedding = nn.Parameter(text_positions)
        self.transformer = TransformerStack(config.text_width, config.text_layers, config.text_heads,
                                            activation="quick_gelu")
        self.ln_final = nn.LayerNorm(config.text_width)
        self.text_projection = nn.Parameter(torch.empty(config.text_width, config.embed_dim).normal_(
            std=config.text_width**-0.5))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # log(100), CLIP's trained value

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) CLIP-normalised -> (B, embed_dim), not normalised."""
        return self.visual(image)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(P, L) token ids, end-of-text the largest id of each row -> (P, embed_dim), not normalised."""
        return self.encode_token_embeddings(self.token_embedding(tokens), tokens.argmax(dim=-1))

    def encode_token_embeddings(self, embeddings: torch.Tensor, end_index: torch.Tensor) -> torch.Tensor:
        """(P, L, width) token embeddings, (P,) end-of-text positions -> (P, embed_dim)."""
        x = self.ln_final(self.transformer(embeddings + self.positional_embedding[: embeddings.shape[1]]))
        return x[torch.arange(x.shape[0], device=x.device), end_index] @ self.text_projection

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(tokens), dim=-1)
        return self.logit_scale.exp() * image_features @ text_features.T  # (B, D) @ (D, P) -> (B, P)


def find_clip_file(path: str | Path | None = None) -> Path:
    """`RN50.pt`: `path` (the file or a folder holding it), else the hub cache `clip/`, else `~/.cache/clip/`."""
    return find_weights(WEIGHTS_FILE, path, cache="clip", extra_folders=[Path.home() / ".cache" / "clip"],
                        needed_by="CLIP-IQA needs OpenAI CLIP's")


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives are zip files with a `code/` folder beside the pickled data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_clip_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """CLIP weights as float32 {name: tensor}: a TorchScript archive (`RN50.pt`, read with torch.jit.load) or
    a plain state dict (.pt / .pth / .safetensors, read without running pickled code). See `find_clip_file`."""
    file = find_clip_file(path)
    if is_torchscript_archive(file):
        with warnings.catch_warnings():  # torch.jit.load is deprecated, yet it is how RN50.pt is read
            warnings.simplefilter("ignore", DeprecationWarning)
            state = torch.jit.load(str(file), map_location="cpu").state_dict()
    else:
        state = load_state_dict(file, what="CLIP checkpoint")
    # fp16 weights (as in RN50.pt) -> float32; integer buffers (num_batches_tracked) stay as they are
    return {name: tensor.float() if tensor.is_floating_point() else tensor
            for name, tensor in state.items() if name not in ARCHIVE_SCALARS}


def clip_resnet_from_state(state: dict[str, torch.Tensor], *, where: str = "CLIP checkpoint") -> ClipResNet:
    """Build the model the state's shapes describe and load it strictly (CheckpointMismatchError otherwise)."""
    absent = [key for key in SIZE_KEYS if key not in state]
    if absent:
        kind = "a CLIP ViT, not a CLIP ResNet" if "visual.proj" in state else "not a CLIP ResNet checkpoint"
        raise CheckpointMismatchError(f"{where} is {kind}: it has no {', '.join(absent)}")
    model = ClipResNet(ClipResNetConfig.from_state(state))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a shape that disagrees with the sizes read off the other tensors
        raise CheckpointMismatchError(f"{where} does not match CLIP ResNet: {error}") from error
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"{where} does not match CLIP ResNet: missing {result.missing_keys[:6]}, "
            f"unexpected {result.unexpected_keys[:6]}"
        )
    return model.eval().requires_grad_(False)
