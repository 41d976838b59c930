"""`stablesr bench official --official-repo PATH`: our step against the official StableSR step, side by side.

Nothing of the official code is part of this package: the user points `--official-repo` at their own
checkout of https://github.com/IceClear/StableSR, and its `UNetModelDualcondV2` (the UNet with SFT) and
`EncoderUNetModelWT` (the time-aware encoder) are imported from there, built from its
`configs/stableSRNew/v2-finetune_text_T_512.yaml` and filled with random weights (normal, std
1/sqrt(fan-in), so activations keep their scale). Our UNet and SR module load the same weights through
the checkpoint key maps (`stablesr.weights.keymap_unet`), and the two outputs are compared before
anything is timed.

One step = time-aware encoder + UNet with SFT, one 64x64 latent (512x512 output), fp32, no guidance.
With `--decode`, also the CFW decode of that latent at fidelity 0.5 on the encoder features of a
512x512 image: the official `Encoder` + `Decoder_Mix` (built from
`configs/autoencoder/autoencoder_kl_64x64x4_resi.yaml`; the 1x1 latent convolutions between them and
the latent are plain Conv2d layers, ours serve both sides) against our `decode_tiled` with the
features of the encode pass, as the pipeline runs a one-window image. The official decoder imports
BasicSR's RRDB; when BasicSR is not installed a stand-in built from `stablesr.models.rrdb` with
plain concatenations (the published formula, no shared buffer) takes its place.
Rows, each timed in interleaved rounds (median):

- official: the official modules as they are;
- ours, torch kernels: our modules with torch's own linear layers (`cpu_kernels` off);
- ours: with `ConvLinear` (oneDNN) on CPU, as the pipeline runs;
- ours, packed weights: also with the large weights packed for oneDNN, as a pipeline run of 20 or more
  steps holds them (the step alone is timed; the packing, once per run, is printed apart);
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
CFW_CONFIG = Path("configs/autoencoder/autoencoder_kl_64x64x4_resi.yaml")
FIDELITY = 0.5
UNET_PREFIX, ENCODER_PREFIX = "model.diffusion_model.", "structcond_stage_model."
ROWS = ("official", "ours, torch kernels", "ours", "bare diffusers UNet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--official-repo", required=True, type=Path,
                        help="a checkout of the official StableSR repository (github.com/IceClear/StableSR)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per allocator block")
    parser.add_argument("--latent-size", type=int, default=64, help="latent side (64 = 512x512 output)")
    parser.add_argument("--decode", action="store_true", help="also compare the CFW decode (w=0.5) of the latent")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(tune_allocator=False)  # the first block measures glibc's allocator as it starts


def import_official(repo: Path):
    """({"unet", "encoder", "vae_encoder", "vae_decoder": official class}, {"ldm", "cfw": config}) from a user's
    checkout of the official code."""
    import yaml

    from stablesr.errors import StableSRError

    model_file = repo / "ldm" / "modules" / "diffusionmodules" / "openaimodel.py"
    missing = [str(path) for path in (model_file.relative_to(repo), CONFIG, CFW_CONFIG) if not (repo / path).is_file()]
    if missing:
        raise StableSRError(f"{repo} is not a checkout of the official StableSR code: {', '.join(missing)} missing")
    try:
        import einops  # noqa: F401
        import omegaconf  # noqa: F401
    except ImportError as error:
        raise StableSRError(f"the official code needs {error.name}: pip install einops omegaconf") from error
    try:
        import basicsr.archs.rrdbnet_arch  # noqa: F401
        import basicsr.archs.stylegan2_arch  # noqa: F401
    except ImportError:
        _install_basicsr_stand_in()
    sys.path.insert(0, str(repo))
    from ldm.modules.diffusionmodules.model import Decoder_Mix, Encoder
    from ldm.modules.diffusionmodules.openaimodel import EncoderUNetModelWT, UNetModelDualcondV2

    configs = {name: yaml.safe_load((repo / path).read_text()) for name, path in
               (("ldm", CONFIG), ("cfw", CFW_CONFIG))}
    return {"unet": UNetModelDualcondV2, "encoder": EncoderUNetModelWT, "vae_encoder": Encoder,
            "vae_decoder": Decoder_Mix}, configs


def _install_basicsr_stand_in() -> None:
    """The four BasicSR names the official modules import: two stylegan2 classes they never use, and the
    RRDB (with `make_layer`) of the CFW fusion blocks, here our RRDB with plain concatenations."""
    from torch import nn

    from stablesr.models.rrdb import RRDB, ResidualDenseBlock

    class ConcatDenseBlock(ResidualDenseBlock):
        def forward(self, x):  # out = x + 0.2 * conv5([x, x1, .., x4]), the concatenations made anew
            features = [x]
            for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
                features.append(self.lrelu(conv(torch.cat(features, dim=1))))
            return x + 0.2 * self.conv5(torch.cat(features, dim=1))

    class ConcatRRDB(RRDB):
        def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
            super().__init__(num_feat, num_grow_ch)
            for block in (self.rdb1, self.rdb2, self.rdb3):
                block.__class__ = ConcatDenseBlock

    import torch

    modules = {name: types.ModuleType(name) for name in
               ("basicsr", "basicsr.archs", "basicsr.archs.stylegan2_arch", "basicsr.archs.rrdbnet_arch",
                "basicsr.archs.arch_util")}
    modules["basicsr.archs.stylegan2_arch"].ConvLayer = modules["basicsr.archs.stylegan2_arch"].EqualConv2d = object
    modules["basicsr.archs.rrdbnet_arch"].RRDB = ConcatRRDB
    util = modules["basicsr.archs.arch_util"]
    util.make_layer = lambda block, count, **kwargs: nn.Sequential(*(block(**kwargs) for _ in range(count)))
    util.default_init_weights = lambda *args, **kwargs: None  # every weight is randomised afterwards
    util.pixel_unshuffle = torch.nn.functional.pixel_unshuffle
    for name, module in modules.items():
        sys.modules.setdefault(name, module)


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


class Group:
    """One compared operation: rows {name: zero-argument callable}, each row's own weights (MB), and how far
    our outputs are from the official one (checked before anything is timed)."""

    def __init__(self, title: str, rows: dict, own_mb: dict[str, float]) -> None:
        self.title, self.rows, self.own_mb = title, rows, own_mb
        reference = rows["official"]()
        self.max_out = reference.abs().max().item()
        self.max_diff = max((rows[row]() - reference).abs().max().item() for row in rows if row.startswith("ours"))


def _weights_mb(*modules) -> float:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters()) / 2**20


class PackedStep:
    """The step inside `packed_weights`, as a pipeline run of PACK_MIN_STEPS or more steps makes it. Packing
    and unpacking happen once per run, not per step, so the call records the step's own seconds
    (`seconds`) and the packing's (`overhead`) apart."""

    def __init__(self, step, modules) -> None:
        self.step, self.modules = step, modules
        self.seconds = self.overhead = 0.0

    def __call__(self):
        from stablesr.models.cpu_kernels import packed_weights

        began = time.perf_counter()
        with packed_weights(self.modules):
            packed = time.perf_counter()
            out = self.step()
            self.seconds = time.perf_counter() - packed
            unpacking = time.perf_counter()
        self.overhead = (packed - began) + (time.perf_counter() - unpacking)
        return out


def _with_conv_linears(fn, modules, enable: bool):
    """fn run with our linear layers as ConvLinear (enable) or torch's own, then torch's own again."""
    from stablesr.models.cpu_kernels import use_conv_linears

    def call():
        for module in modules:
            use_conv_linears(module, enable)
        try:
            return fn()
        finally:
            for module in modules:
                use_conv_linears(module, False)
    call.inner = fn
    return call


def build_step(official, configs, args) -> Group:
    import torch
    from diffusers import UNet2DConditionModel

    from stablesr.models.sft_unet import SFTUNet, StableSRModule
    from stablesr.pipelines.stablesr import make_guided_tile_fn
    from stablesr.weights.keymap_unet import convert_ldm_unet, convert_sr_module, load_default_unet_config

    params = configs["ldm"]["model"]["params"]
    official_unet = official["unet"](**params["unet_config"]["params"]).eval().requires_grad_(False)
    official_encoder = official["encoder"](**params["structcond_stage_config"]["params"]).eval().requires_grad_(False)
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

    def official_step():
        return official_unet(x_t, t, context=context, struct_cond=official_encoder(lr_latent, t))

    def our_step():
        return tile_fn(x_t, lr_latent, 999)

    rows = {"official": official_step, "ours, torch kernels": _with_conv_linears(our_step, [sft_unet], False),
            "ours": _with_conv_linears(our_step, [sft_unet], True),
            "ours, packed weights": _with_conv_linears(PackedStep(our_step, [sft_unet]), [sft_unet], True),
            "bare diffusers UNet": lambda: unet(x_t, t, context).sample}
    ours_mb = _weights_mb(unet, sr_module)
    own = {"official": _weights_mb(official_unet, official_encoder), "ours, torch kernels": ours_mb, "ours": ours_mb,
           "ours, packed weights": ours_mb, "bare diffusers UNet": _weights_mb(unet)}
    return Group(f"step {size * 8} (encoder + UNet with SFT)", rows, own)


def build_decode(official, configs, args) -> Group:
    import torch

    from stablesr.configs import UpscaleSettings
    from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
    from stablesr.tiling.vae import decode_tiled
    from stablesr.weights.keymap_vae import convert_cfw, vae_config_from_ldm

    params = configs["cfw"]["model"]["params"]
    ddconfig, embed_dim = params["ddconfig"], params["embed_dim"]
    encoder = official["vae_encoder"](**ddconfig).eval().requires_grad_(False)
    decoder = official["vae_decoder"](**ddconfig, fusion_w=FIDELITY).eval().requires_grad_(False)
    vae = CFWAutoencoderKL(**vae_config_from_ldm(ddconfig, embed_dim=embed_dim)).eval().requires_grad_(False)
    # The official model's 1x1 latent convolutions are plain Conv2d layers: both sides use ours.
    latent_convs = {"quant_conv": vae.quant_conv, "post_quant_conv": vae.post_quant_conv}
    parts = {"encoder": encoder, "decoder": decoder, **latent_convs}
    randomise(*parts.values(), seed=args.seed + 2)
    state = {f"{name}.{key}": value for name, part in parts.items() for key, value in part.state_dict().items()}
    vae.load_state_dict(convert_cfw(state), strict=True)
    del state

    generator = torch.Generator().manual_seed(args.seed + 3)
    size = args.latent_size
    image = torch.rand(1, 3, size * 8, size * 8, generator=generator) * 2 - 1
    z = torch.randn(1, embed_dim, size, size, generator=generator)
    official_features = encoder(image, return_fea=True)[1]  # the features the official encode pass returns
    our_features = vae.encode_with_features(image)[1]
    tile, overlap = UpscaleSettings().vae_decode_tiles(8)

    def official_decode():  # the official decode: its Decoder_Mix after the latent 1x1 convolution
        return decoder(vae.post_quant_conv(z), official_features)

    def our_decode():  # the pipeline's one-window decode, on the features of its encode pass
        return decode_tiled(vae, z, tile_size=tile, tile_overlap=overlap, cond_image=image, fidelity=FIDELITY,
                            cond_features=our_features)

    rows = {"official": official_decode, "ours, torch kernels": _with_conv_linears(our_decode, [vae], False),
            "ours": _with_conv_linears(our_decode, [vae], True)}
    ours_mb = _weights_mb(vae)
    own = {"official": _weights_mb(*parts.values()), "ours, torch kernels": ours_mb, "ours": ours_mb}
    return Group(f"CFW decode {size * 8}, w={FIDELITY}", rows, own)


def run(args: argparse.Namespace) -> int:
    import psutil
    import torch

    from stablesr.bench.memory import PeakMemory
    from stablesr.errors import StableSRError
    from stablesr.models.cpu_kernels import PACK_MIN_STEPS, release_free_memory, tune_cpu_allocator

    device = torch.device("cpu")
    start = time.perf_counter()
    official, configs = import_official(args.official_repo.expanduser())
    with torch.no_grad():
        groups = [build_step(official, configs, args)]
        if args.decode:
            groups.append(build_decode(official, configs, args))
        print(f"built in {time.perf_counter() - start:.0f} s; {torch.get_num_threads()} threads, fp32, latent "
              f"{args.latent_size}x{args.latent_size}")
        for group in groups:
            print(f"  {group.title}: max |official - ours| {group.max_diff:.2e} (max |official| {group.max_out:.3f})")
            if not group.max_diff <= 1e-4 * max(1.0, group.max_out):
                raise StableSRError(f"{group.title}: the outputs differ by {group.max_diff:.3g}: not the same "
                                    "computation, nothing timed")
        times: dict[tuple, list[float]] = {}
        peaks: dict[tuple, float] = {}
        overheads: list[float] = []
        for block in ("default", "tuned"):
            if block == "tuned" and not tune_cpu_allocator():
                print("allocator tuning not available here (not glibc, or STABLESR_MALLOC_TUNING=0)")
                break
            for group in groups:
                for row, call in group.rows.items():  # warm-up and memory probe: how far the process grows
                    release_free_memory()  # what earlier rows freed is not there to reuse
                    before_mb = psutil.Process().memory_info().rss / 2**20
                    with PeakMemory(device) as memory:
                        call()
                    if block == "default":  # a tuned allocator keeps what earlier rows freed: no rise to see
                        peaks[group.title, block, row] = group.own_mb[row] + memory.peak_mb - before_mb
            for _ in range(args.rounds):
                for group in groups:
                    for row, call in group.rows.items():
                        began = time.perf_counter()
                        call()
                        seconds = time.perf_counter() - began
                        inner = getattr(call, "inner", None)
                        if isinstance(inner, PackedStep):  # the step alone; the packing is reported apart
                            seconds = inner.seconds
                            overheads.append(inner.overhead)
                        times.setdefault((group.title, block, row), []).append(seconds)
    _print_table(groups, times, peaks)
    if overheads:
        print(f"packing + unpacking the weights, once per pipeline run of {PACK_MIN_STEPS}+ steps: "
              f"{statistics.median(overheads):.2f} s (median)")
    return 0


def _print_table(groups, times, peaks) -> None:
    print(f"{'allocator':9s} {'row':22s} {'median s':>9s} {'(min-max)':>13s} {'x official':>10s} "
          f"{'x official, same block':>22s} {'peak MB':>8s}")
    for group in groups:
        print(group.title)
        official = statistics.median(times[group.title, "default", "official"])
        for (title, block, row), samples in times.items():
            if title != group.title:
                continue
            median = statistics.median(samples)
            same_block = statistics.median(times[title, block, "official"])
            peak = peaks.get((title, block, row))
            print(f"{block:9s} {row:22s} {median:9.2f} {f'({min(samples):.2f}-{max(samples):.2f})':>13s} "
                  f"{median / official:10.3f} {median / same_block:22.3f} "
                  f"{'' if peak is None else f'{peak:.0f}':>8s}")
    print("x official: against the official row with the allocator as the process started (what its users get). "
          "peak MB: the row's own weights + how far the process RSS rose during its first call (free heap pages "
          "released before each); both implementations live in this one process, so its whole RSS says nothing")
