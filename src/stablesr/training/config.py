"""Typed, frozen training configs for StableSR stage 1 and CFW (https://arxiv.org/abs/2305.07015).

A YAML file only fills these dataclasses; every field can also be set on the command line as
`--section.field value` (the value is parsed as YAML: `--run.max_steps 100`,
`--data.hr_folders "[a, b]"`). Defaults follow the official recipe (section 9 and 7 of the
paper's code release): AdamW lr 5e-5, batch 6 x accumulation 4 per GPU, 512 crops, checkpoints
every 1500 steps; CFW: Adam betas (0.5, 0.9), L1 + LPIPS + hinge PatchGAN with weight 0.025 from
step 501, batch 1 x accumulation 8.

This module imports no torch, so the CLI can list every option instantly.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from stablesr.data.records import from_record, to_record, with_overrides

Base = Literal["sd21-base", "sd21-768v", "sd-turbo"]
DegradationPreset = Literal["realesrgan", "stablesr", "ccsr", "bsrgan", "bicubic"]
MixedPrecision = Literal["no", "fp16", "bf16"]
Config = TypeVar("Config")


@dataclass(frozen=True)
class ModelInit:
    """Where the starting weights come from (exactly one of pipeline / checkpoints / base).

    - `pipeline`: a folder written by `stablesr convert` or by a previous training run;
    - `checkpoints`: official files for `build_pipeline` (e.g. stablesr_000117.ckpt);
    - `base`: "from scratch": an SD 2.x base (diffusers folder or single file) + a fresh SR module.
    `fresh_sr_module` re-initialises the SR module of a pipeline/checkpoint (same sizes).
    """

    pipeline: str | None = None
    checkpoints: tuple[str, ...] = ()
    base: str | None = None
    base_name: Base = "sd21-base"
    trust_pickle: bool = False
    fresh_sr_module: bool = False


@dataclass(frozen=True)
class DataSettings:
    """HR folders degraded on the fly. `degrade_on` 'loader' degrades each item in the DataLoader
    workers (independent draws per image); 'device' degrades whole batches on the accelerator
    through the Real-ESRGAN shuffle queue of `queue_size` pairs (saved in checkpoints).
    `repeats` crops per image per epoch; `cache_images` keeps the decoded pool in memory (small
    pools); `mild_fraction` of the items use plain bicubic downscaling instead of the preset."""

    hr_folders: tuple[str, ...] = ()
    crop_size: int = 512
    min_size: int = 384
    min_bytes: int = 0
    hflip: bool = True
    degradation: DegradationPreset = "stablesr"
    scale: int = 4
    degrade_on: Literal["loader", "device"] = "loader"
    queue_size: int = 180
    batch_size: int = 6
    num_workers: int = 2
    repeats: int = 1
    cache_images: bool = False
    mild_fraction: float = 0.0


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW (stage 1; torch defaults as the official code) or Adam (CFW: betas (0.5, 0.9), no decay)."""

    learning_rate: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float = 0.0


@dataclass(frozen=True)
class RunSettings:
    """The loop: steps are optimizer steps (each = `gradient_accumulation_steps` micro-batches)."""

    output_dir: str = "runs/stablesr"
    max_steps: int = 800_000
    gradient_accumulation_steps: int = 4
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0
    checkpoint_every: int = 1500
    keep_checkpoints: int = 3
    log_every: int = 10
    validate_every: int = 1500
    validation_images: tuple[str, ...] = ()
    validation_steps: int = 20
    seed: int = 23
    resume: str | None = None
    overwrite: bool = False  # a fresh run may replace an earlier run's checkpoints, logs and previews here
    cpu: bool = False
    progress: bool = True


@dataclass(frozen=True)
class StableSRTrainConfig:
    """`stablesr train stablesr`: time-aware encoder + SFT layers on a frozen SD UNet and VAE."""

    model: ModelInit = field(default_factory=ModelInit)
    data: DataSettings = field(default_factory=DataSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    run: RunSettings = field(default_factory=RunSettings)
    train_unet: bool = False
    unet_learning_rate: float = 2e-5


@dataclass(frozen=True)
class CFWDataSettings:
    """Folders written by `stablesr generate-cfw-data` (inputs/, gts/, latents/)."""

    folders: tuple[str, ...] = ()
    batch_size: int = 1
    num_workers: int = 2


@dataclass(frozen=True)
class CFWLossSettings:
    """L1 + perceptual_weight * LPIPS(VGG) + disc_weight * hinge GAN (constant weight, as the
    official run: its adaptive weight falls back to the constant). The discriminator (a 3-layer
    PatchGAN) trains from step `disc_start` on."""

    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    lpips_backbone_path: str | None = None
    disc_weight: float = 0.025
    disc_start: int = 501
    disc_channels: int = 64
    disc_layers: int = 3


@dataclass(frozen=True)
class CFWTrainConfig:
    """`stablesr train cfw`: only the two CFW fusion layers (and the discriminator) train; with
    `train_decoder` the VAE decoder finetunes with them (a from-scratch VAE, e.g. stablesr-nano)."""

    pipeline: str | None = None
    fresh_fusion: bool = True
    train_decoder: bool = False
    data: CFWDataSettings = field(default_factory=CFWDataSettings)
    loss: CFWLossSettings = field(default_factory=CFWLossSettings)
    optimizer: OptimizerSettings = field(
        default_factory=lambda: OptimizerSettings(betas=(0.5, 0.9), weight_decay=0.0))
    run: RunSettings = field(
        default_factory=lambda: RunSettings(output_dir="runs/cfw", gradient_accumulation_steps=8, max_steps=100_000))


@dataclass(frozen=True)
class VAEArchitecture:
    """A `CFWAutoencoderKL` built from scratch: len(block_out_channels) levels give a latent
    downsampling of 2^(levels - 1). The fusion layers are created but train later (`train cfw`).
    `norm_num_groups` 8 keeps >= 4 channels per GroupNorm group at 32 channels: with one channel per
    group (SD's 32 groups on 32 channels) GroupNorm is InstanceNorm and erases each channel's mean,
    i.e. the crop's colour, which the young network then cannot learn."""

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    mid_block_add_attention: bool = False
    num_fuse_blocks: int = 1
    fuse_growth_channels: int = 16


@dataclass(frozen=True)
class VAELossSettings:
    """L1 + frequency_weight * mean|FFT(x) - FFT(y)| (orthonormal) + kl_weight * mean KL
    + perceptual_weight * LPIPS(VGG) (when its weights exist) + disc_weight * hinge GAN from disc_start."""

    l1_weight: float = 1.0
    frequency_weight: float = 0.5
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    lpips_backbone_path: str | None = None
    disc_weight: float = 0.05
    disc_start: int = 1000
    disc_channels: int = 32
    disc_layers: int = 3


@dataclass(frozen=True)
class VAETrainConfig:
    """`stablesr train vae`: a KL autoencoder (4 latent channels) from scratch on HR crops."""

    architecture: VAEArchitecture = field(default_factory=VAEArchitecture)
    data: DataSettings = field(default_factory=lambda: DataSettings(crop_size=128, min_size=128, batch_size=8))
    loss: VAELossSettings = field(default_factory=VAELossSettings)
    optimizer: OptimizerSettings = field(
        default_factory=lambda: OptimizerSettings(learning_rate=2e-4, betas=(0.5, 0.9), weight_decay=0.0))
    run: RunSettings = field(default_factory=lambda: RunSettings(output_dir="runs/vae", gradient_accumulation_steps=1,
                                                                 max_steps=3000, checkpoint_every=250))


@dataclass(frozen=True)
class UNetArchitecture:
    """A small diffusers `UNet2DConditionModel`: resnet-only levels, one attention block in the middle
    (self-attention + cross-attention to a fixed null context of `context_length` tokens)."""

    block_out_channels: tuple[int, ...] = (64, 128, 192)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    cross_attention_dim: int = 64
    attention_heads: int = 4
    context_length: int = 1


@dataclass(frozen=True)
class SRModuleArchitecture:
    """The fresh time-aware encoder + SFT layers written beside the prior (trained by `train stablesr`)."""

    cond_channels: int = 64
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 3)
    num_res_blocks: int = 1
    sft_hidden_channels: int = 64
    num_heads: int = 4


@dataclass(frozen=True)
class PriorTrainConfig:
    """`stablesr train prior`: an unconditional latent diffusion UNet on photo crops, in the latent
    space of a VAE trained by `train vae` (`vae`: its run folder or its vae/ folder)."""

    vae: str | None = None
    unet: UNetArchitecture = field(default_factory=UNetArchitecture)
    sr_module: SRModuleArchitecture = field(default_factory=SRModuleArchitecture)
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    data: DataSettings = field(default_factory=lambda: DataSettings(crop_size=256, min_size=256, batch_size=8))
    optimizer: OptimizerSettings = field(default_factory=lambda: OptimizerSettings(learning_rate=2e-4))
    run: RunSettings = field(default_factory=lambda: RunSettings(output_dir="runs/prior", gradient_accumulation_steps=1,
                                                                 max_steps=2000, checkpoint_every=250))


@dataclass(frozen=True)
class CCSRStage1TrainConfig:
    """`stablesr train ccsr-stage1`: the CCSR control module on a frozen SD UNet (v1 or v2, by the model).

    `model.pipeline`: a CCSR pipeline folder (`stablesr convert --method ccsr`, or a previous run);
    `t_max_step`: the truncation point tau (official: round(1000 * 0.6667) = 667).
    """

    model: ModelInit = field(default_factory=ModelInit)
    data: DataSettings = field(default_factory=DataSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    run: RunSettings = field(default_factory=RunSettings)
    t_max_step: int = 667


@dataclass(frozen=True)
class CCSRStage2TrainConfig:
    """`stablesr train ccsr-stage2`: finetune the VAE decoder (v1: + post_quant_conv) on the frozen stage-1
    trajectory's x0 (steps / t_max / t_min: the sampling recipe; None steps: 45 for v1, 1 for v2).

    Loss: L1 + perceptual_weight * LPIPS(VGG) when its weights are found + disc_weight * hinge GAN
    (PatchGAN); the official v1 run: Adam(5e-6, betas (0.5, 0.9)), disc weight 0.5 from step 1.
    """

    model: ModelInit = field(default_factory=ModelInit)
    data: DataSettings = field(default_factory=DataSettings)
    loss: CFWLossSettings = field(default_factory=lambda: CFWLossSettings(disc_weight=0.5, disc_start=1))
    optimizer: OptimizerSettings = field(
        default_factory=lambda: OptimizerSettings(learning_rate=5e-6, betas=(0.5, 0.9), weight_decay=0.0))
    run: RunSettings = field(default_factory=RunSettings)
    steps: int | None = None
    t_max: float = 0.6667
    t_min: float | None = None


@dataclass(frozen=True)
class DegradationLearnerArchitecture:
    """DeeDSR's ResNet degradation encoder (`models/degradation_learner.py`). Default: the wide BasicBlock
    ResNet [3, 4, 6, 3] (widths 128..1024, a 1024-d vector) of the released diffusion config; `block:
    bottleneck, widths: [64, 128, 256, 512]` is the torchvision ResNet-50 layout (2048-d)."""

    block: Literal["basic", "bottleneck"] = "basic"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (128, 256, 512, 1024)
    stem_channels: int = 64


@dataclass(frozen=True)
class ContrastiveSettings:
    """MoCo (DeeDSR stage 1): tau 0.07, queue 24,576 keys, key-encoder momentum 0.999, a 1024-d MLP head;
    query and positive are two different `patch_size` crops of the same degraded LR image."""

    temperature: float = 0.07
    queue_size: int = 24576
    momentum: float = 0.999
    head_dim: int = 1024
    patch_size: int = 64


@dataclass(frozen=True)
class SGDSettings:
    """SGD with momentum (MoCo: lr 0.03, momentum 0.9, weight decay 1e-4), the learning rate times
    `lr_decay_factor` at each fraction of max_steps in `lr_decay_at` (MoCo's epochs 120 and 240 of 300)."""

    learning_rate: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_decay_at: tuple[float, ...] = (0.4, 0.8)
    lr_decay_factor: float = 0.1
    warmup_steps: int = 0


@dataclass(frozen=True)
class DegradationTrainConfig:
    """`stablesr train deedsr-degradation`: DeeDSR stage 1, the degradation learner by contrastive learning
    on LR images degraded on the fly (Real-ESRGAN second order, 512 HR crops -> 128 LR)."""

    architecture: DegradationLearnerArchitecture = field(default_factory=DegradationLearnerArchitecture)
    contrastive: ContrastiveSettings = field(default_factory=ContrastiveSettings)
    data: DataSettings = field(default_factory=lambda: DataSettings(degradation="realesrgan", batch_size=32))
    optimizer: SGDSettings = field(default_factory=SGDSettings)
    run: RunSettings = field(default_factory=lambda: RunSettings(output_dir="runs/deedsr-degradation",
                                                                 gradient_accumulation_steps=1, max_steps=200_000,
                                                                 checkpoint_every=5000))


@dataclass(frozen=True)
class DeeDSRModelInit:
    """Where DeeDSR stage 2 starts: `pipeline`, a DeeDSR folder (a previous `train deedsr` run) to continue; or
    `base`, a StableSR-format pipeline folder or bundled name (its UNet, VAE and scheduler; e.g. `stablesr
    convert` output or "stablesr-nano") plus `degradation_learner`, a `train deedsr-degradation` run folder or its
    degradation_learner/ folder, and a fresh adapter of `adapter`'s size."""

    pipeline: str | None = None
    base: str | None = None
    degradation_learner: str | None = None


@dataclass(frozen=True)
class AdapterArchitecture:
    """The degradation-aware adapter (`models/deedsr_adapter.py`); defaults follow the released Encoder_degrad:
    256 channels, [1, 1, 2, 2], one resnet per level, 4 heads, 256-channel maps, 128 hidden modulation channels."""

    cond_channels: int = 256
    hidden_channels: int = 128
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 1
    num_heads: int = 4


@dataclass(frozen=True)
class DeeDSRTrainConfig:
    """`stablesr train deedsr`: DeeDSR stage 2. The degradation learner, the UNet (but its cross-attention key/value
    projections) and the VAE are frozen; the adapter, the modulation layers and attn2.to_k / to_v train with the
    LDM loss. Released recipe: AdamW lr 1e-5, batch 2 x accumulation 16 per GPU (4 GPUs), 512 crops."""

    model: DeeDSRModelInit = field(default_factory=DeeDSRModelInit)
    adapter: AdapterArchitecture = field(default_factory=AdapterArchitecture)
    data: DataSettings = field(default_factory=lambda: DataSettings(degradation="realesrgan", batch_size=2))
    optimizer: OptimizerSettings = field(default_factory=lambda: OptimizerSettings(learning_rate=1e-5))
    run: RunSettings = field(default_factory=lambda: RunSettings(output_dir="runs/deedsr",
                                                                 gradient_accumulation_steps=16))


STAGES: dict[str, type] = {"stablesr": StableSRTrainConfig, "cfw": CFWTrainConfig, "vae": VAETrainConfig,
                           "prior": PriorTrainConfig,
                           "deedsr-degradation": DegradationTrainConfig, "deedsr": DeeDSRTrainConfig,
                           "ccsr-stage1": CCSRStage1TrainConfig, "ccsr-stage2": CCSRStage2TrainConfig}


def config_from_dict(cls: type[Config], data: dict) -> Config:
    """Defaults of `cls` with the nested `data` applied; unknown keys and bad Literal values raise."""
    config = with_overrides(cls(), data or {})
    check_literals(config)
    return config


def check_literals(config) -> None:
    """Raise ValueError for a string option outside its Literal choices (recursively)."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            check_literals(value)
        elif typing.get_origin(hints[item.name]) is Literal and value not in typing.get_args(hints[item.name]):
            raise ValueError(f"{item.name} must be one of {typing.get_args(hints[item.name])}, got {value!r}")


def parse_overrides(pairs: dict[str, str]) -> dict:
    """{'run.max_steps': '100'} -> {'run': {'max_steps': 100}} (values parsed as YAML)."""
    import yaml

    nested: dict = {}
    for dotted, text in pairs.items():
        *sections, name = dotted.split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        try:
            target[name] = yaml.safe_load(text) if isinstance(text, str) else text
        except yaml.YAMLError as error:
            raise ValueError(f"--{dotted} {text!r} is not a valid YAML value") from error
    return nested


def merge(base: dict, extra: dict) -> dict:
    """Nested dict merge; `extra` wins."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(stage: str, path: str | Path | None,
                overrides: dict[str, str] | None = None):
    """The config of `stage` from a YAML file (optional) plus dotted command-line overrides."""
    import yaml

    try:
        data = (yaml.safe_load(Path(path).read_text()) or {}) if path is not None else {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config sections, not a {type(data).__name__}")
    return config_from_dict(STAGES[stage], merge(data, parse_overrides(overrides or {})))


def option_names(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """Every leaf option as (dotted name, type text), for the command line's --help."""
    hints = typing.get_type_hints(cls)
    names = []
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        if dataclasses.is_dataclass(hint):
            names += option_names(hint, f"{prefix}{item.name}.")
        else:
            names.append((f"{prefix}{item.name}", str(hint).replace("typing.", "")))
    return names


def save_config_json(config, path: str | Path) -> None:
    Path(path).write_text(json.dumps({"stage": stage_of(config), **to_record(config)}, indent=2))


def load_config_json(path: str | Path):
    data = json.loads(Path(path).read_text())
    return from_record(STAGES[data.pop("stage")], data)


def stage_of(config) -> str:
    return next(name for name, cls in STAGES.items() if isinstance(config, cls))
