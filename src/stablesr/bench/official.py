"""`stablesr bench official --official-repo PATH`: our step against the official StableSR step, side by side.

Nothing of the official code is part of this package: the user points `--official-repo` at their own
checkout of https://github.com/IceClear/StableSR, and its `UNetModelDualcondV2` (the UNet with SFT) and
`EncoderUNetModelWT` (the time-aware encoder) are imported from there, built from its
`configs/stableSRNew/v2-finetune_text_T_512.yaml` and filled with random weights (normal, std
1/sqrt(fan-in), so activations keep their scale). Our UNet and SR module load the same weights through
the checkpoint key maps (`stablesr.weights.keymap_unet`), and the two outputs are compared before
anything is timed.

One step = time-aware encoder + UNet with SFT, one 64x64 latent (512x512 output), fp32, no guidance.
Rows, each timed in interleaved rounds (median):

- official: the official modules as they are;
- ours, torch kernels: our modules with torch's own linear layers (`cpu_kernels` off);
- ours: with `ConvLinear` (oneDNN) on CPU, as the pipeline runs;
- bare diffusers UNet: the untouched UNet2DConditionModel, no encoder or SFT (the baseline of `bench models`).

All rows run twice: first with glibc's allocator as a process starts (what a user of the official code
gets), then after `tune_cpu_allocator()` (what `stablesr` does). The ratio that matters is ours (tuned)
over official (default); each block's own ratios are printed too. The official code needs `einops`
and `omegaconf` (pip install einops omegaconf); `basicsr` is replaced by an empty stand-in when it is
missing (its two imported classes are not used by these modules).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

CONFIG = Path("configs/stableSRNew/v2-finetune_text_T_512.yaml")
UNET_PREFIX, ENCODER_PREFIX = "model.diffusion_model.", "structcond_stage_model."
ROWS = ("official", "ours, torch kernels", "ours", "bare diffusers UNet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--official-repo", required=True, type=Path,
                        help="a checkout of the official StableSR repository (github.com/IceClear/StableSR)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per allocator block")
    parser.add_argument("--latent-size", type=int, default=64, help="latent side (64 = 512x512 output)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(tune_allocator=False)  # the first block measures glibc's allocator as it starts


def import_official(repo: Path):
    """(UNetModelDualcondV2, EncoderUNetModelWT, config dict) from a user's checkout of the official code."""
    import yaml

    from stablesr.errors import StableSRError

    model_file = repo / "ldm" / "modules" / "diffusionmodules" / "openaimodel.py"
    if not model_file.is_file() or not (repo / CONFIG).is_file():
        raise StableSRError(f"{repo} is not a checkout of the official StableSR code: "
                            f"{model_file.relative_to(repo)} or {CONFIG} is missing")
    try:
        import einops  # noqa: F401
        import omegaconf  # noqa: F401
    except ImportError as error:
        raise StableSRError(f"the official code needs {error.name}: pip install einops omegaconf") from error
    try:
        import basicsr.archs.stylegan2_arch  # noqa: F401
    except ImportError:  # openaimodel imports two basicsr classes that these modules never use
        stand_in = types.ModuleType("basicsr.archs.stylegan2_arch")
        stand_in.ConvLayer = stand_in.EqualConv2d = object
        for name in ("basicsr", "basicsr.archs"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["basicsr.archs.stylegan2_arch"] = stand_in
    sys.path.insert(0, str(repo))
    from ldm.modules.diffusionmodules.openaimodel import EncoderUNetModelWT, UNetModelDualcondV2

    return UNetModelDualcondV2, EncoderUNetModelWT, yaml.safe_load((repo / CONFIG).read_text())


def randomise(*modules, seed: int) -> None:
    """Every parameter ~ N(0, 1/fan-in) (vectors: N(0, 0.01)); the official zero-initialised output layers
    would otherwise make the step's output zero."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                std = param[0].numel() ** -0.5 if param.dim() > 1 else 0.01
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def build(args):
    """(steps {row: zero-argument callable}, weights MB {row: MB}, max |official - ours|, max |official|)."""
    import torch
    from diffusers import UNet2DConditionModel

    from stablesr.models.cpu_kernels import use_conv_linears
    from stablesr.models.sft_unet import SFTUNet, StableSRModule
    from stablesr.pipelines.stablesr import make_guided_tile_fn
    from stablesr.weights.keymap_unet import convert_ldm_unet, convert_sr_module, load_default_unet_config

    unet_class, encoder_class, config = import_official(args.official_repo.expanduser())
    params = config["model"]["params"]
    official_unet = unet_class(**params["unet_config"]["params"]).eval().requires_grad_(False)
    official_encoder = encoder_class(**params["structcond_stage_config"]["params"]).eval().requires_grad_(False)
    randomise(official_unet, official_encoder, seed=args.seed)
    state = {UNET_PREFIX + key: value for key, value in official_unet.state_dict().items()}
    state.update({ENCODER_PREFIX + key: value for key, value in official_encoder.state_dict().items()})
    unet_config = load_default_unet_config()
    unet = UNet2DConditionModel.from_config(unet_config).eval().requires_grad_(False)
    unet.load_state_dict(convert_ldm_unet(state, unet_config), strict=True)
    sr_module = StableSRModule.from_unet(unet).eval().requires_grad_(False)
    sr_module.load_state_dict(convert_sr_module(state, unet_config=unet_config), strict=True)
    del state
    sft_unet = SFTUNet(unet, sr_module)

    generator = torch.Generator().manual_seed(args.seed + 1)
    size = args.latent_size
    x_t, lr_latent = torch.randn(2, 1, 4, size, size, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    t = torch.tensor([999])
    tile_fn = make_guided_tile_fn(sft_unet, context, None, 1.0)

    def official():
        return official_unet(x_t, t, context=context, struct_cond=official_encoder(lr_latent, t))

    def ours(conv: bool):
        def step():
            use_conv_linears(sft_unet, conv)
            try:
                return tile_fn(x_t, lr_latent, 999)
            finally:
                use_conv_linears(sft_unet, False)
        return step

    def bare():
        return unet(x_t, t, context).sample

    steps = dict(zip(ROWS, (official, ours(False), ours(True), bare)))
    reference = official()
    diffs = [(steps[row]() - reference).abs().max().item() for row in ROWS[1:3]]

    def weights_mb(*modules):
        return sum(p.numel() * p.element_size() for m in modules for p in m.parameters()) / 2**20

    own = {"official": weights_mb(official_unet, official_encoder), "bare diffusers UNet": weights_mb(unet)}
    own.update({row: weights_mb(unet, sr_module) for row in ROWS[1:3]})
    return steps, own, max(diffs), reference.abs().max().item()


def run(args: argparse.Namespace) -> int:
    import psutil
    import torch

    from stablesr.bench.memory import PeakMemory
    from stablesr.errors import StableSRError
    from stablesr.models.cpu_kernels import tune_cpu_allocator

    device = torch.device("cpu")
    start = time.perf_counter()
    with torch.no_grad():
        steps, own_mb, max_diff, out_max = build(args)
        print(f"built in {time.perf_counter() - start:.0f} s; {torch.get_num_threads()} threads, fp32, latent "
              f"{args.latent_size}x{args.latent_size}; max |official - ours| {max_diff:.2e} (max |out| {out_max:.3f})")
        if not max_diff <= 1e-4 * max(1.0, out_max):
            raise StableSRError(f"the two steps differ by {max_diff:.3g}: not the same computation, nothing timed")
        times: dict[tuple[str, str], list[float]] = {}
        peaks: dict[tuple[str, str], float] = {}
        for block in ("default", "tuned"):
            if block == "tuned" and not tune_cpu_allocator():
                print("allocator tuning not available here (not glibc, or STABLESR_MALLOC_TUNING=0)")
                break
            for row, step in steps.items():  # warm-up and memory probe: how far the process grows
                before_mb = psutil.Process().memory_info().rss / 2**20
                with PeakMemory(device) as memory:
                    step()
                if block == "default":  # a tuned allocator keeps what earlier rows freed: no rise to see
                    peaks[block, row] = own_mb[row] + memory.peak_mb - before_mb
            for _ in range(args.rounds):
                for row, step in steps.items():
                    began = time.perf_counter()
                    step()
                    times.setdefault((block, row), []).append(time.perf_counter() - began)
    _print_table(times, peaks)
    return 0


def _print_table(times, peaks) -> None:
    official = statistics.median(times["default", "official"])
    print(f"{'allocator':9s} {'step':22s} {'median s':>9s} {'(min-max)':>13s} {'x official':>10s} "
          f"{'x official, same block':>22s} {'peak MB':>8s}")
    for (block, row), samples in times.items():
        median = statistics.median(samples)
        same_block = statistics.median(times[block, "official"])
        print(f"{block:9s} {row:22s} {median:9.2f} {f'({min(samples):.2f}-{max(samples):.2f})':>13s} "
              f"{median / official:10.3f} {median / same_block:22.3f} {peaks.get((block, row), float('nan')):8.0f}")
    print("peak MB: that row's own weights + how far the process RSS rose during its first call (both "
          "implementations are loaded in this one process, so the whole RSS says nothing per row)")
