"""`stablesr bench models`: per-step time, decode time and peak memory of StableSR, as ratios to a baseline.

Random weights at a chosen size ('sd21' = the full SD 2.1 / StableSR 512 configuration, 'tiny' =
the parity-fixture size), so no download is needed. Every figure is also printed as a ratio to the
baseline measured in the same run, the untouched diffusers UNet step (fp32, one latent tile), so a
regression shows whatever the machine's load. Timings are medians over interleaved rounds (each
round runs every phase once), which is what a shared CPU needs.

Phases, per dtype: the step (time-aware encoder + UNet with SFT) at each output size, over the
latent tiles the pipeline would use (tile 64, overlap 32, `--tile-batch-size` tiles per call:
1 tile at 512, 9 at 1024, 225 at 4096). A step over many tiles is the sum of its tile batches, so
by default the full batch and the remainder batch are timed and summed ("from batches"; the
Gaussian blending around them costs well under 1 % of a tile); `--whole-steps` times the real
aggregated step instead. Then the decodes at `--decode-sizes`: the untouched AutoencoderKL decoder
(no CFW: a lower bound of the official CFW decode, which runs this decoder plus the two fusion
blocks on the features of its encode pass), our tiled CFW decode (`decode_tiled`, fidelity 0.5, the
features recomputed per window) and, when the image is one window, the CFW decode on the features
of the encode pass, as the pipeline then runs it. Peak memory is the process RSS (CUDA: max
allocated) during one step, measured while only that dtype's models are loaded (the UNet + SR
module in the dtype, the VAE in fp32, as the pipeline keeps it on CPU). The bf16 (fp16) step
output is compared with fp32 on the same inputs.
"""

from __future__ import annotations

import argparse
import statistics
import time

SIZES = ("sd21", "tiny")
TILE, OVERLAP = 64, 32  # latent tile and overlap of the default settings
BASELINE = "diffusers UNet step (1 tile, no SFT)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=SIZES, default="sd21", help="model size (random weights)")
    parser.add_argument("--image-sizes", default="512,1024,4096",
                        help="comma list of output sides in pixels (square) for the step")
    parser.add_argument("--decode-sizes", default="512",
                        help="comma list of output sides for the tiled CFW decode (empty: none); slow on CPU")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (medians reported)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, fp16, bf16 (the first is the "
                                                              "reference of the error figures)")
    parser.add_argument("--tile-batch-size", type=int, default=4, help="latent tiles per UNet call (as the setting)")
    parser.add_argument("--whole-steps", action="store_true",
                        help="time whole aggregated steps over all tiles instead of summing tile batches")
    parser.add_argument("--guidance", action="store_true",
                        help="also time the one-tile step with classifier-free guidance (a batch of 2)")
    parser.add_argument("--torch-kernels", action="store_true",
                        help="run our phases with torch's own linear layers, not the pipeline's CPU kernels")
    parser.add_argument("--no-packing", action="store_true",
                        help="time our steps without the packed weights a pipeline run of 20+ steps uses on CPU")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--seed", type=int, default=0)


def build_random_models(size: str):
    """(unet, sr_module, vae) with random weights; 'sd21' uses the shipped SD 2.1-base configs."""
    from diffusers import UNet2DConditionModel

    from stablesr.models.cfw_autoencoder import CFWAutoencoderKL
    from stablesr.models.sft_unet import StableSRModule
    from stablesr.weights.loading import shipped_config

    if size == "sd21":
        unet = UNet2DConditionModel(**shipped_config("sd21-base", "unet"))
        return unet, StableSRModule.from_unet(unet), CFWAutoencoderKL(**shipped_config("sd21-base", "vae"))
    unet = UNet2DConditionModel(block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=64,
                                attention_head_dim=(4, 8, 16, 16), use_linear_projection=True, sample_size=32,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    sr_module = StableSRModule.from_unet(unet, cond_channels=64, model_channels=64, out_channels=64)
    vae = CFWAutoencoderKL(block_out_channels=(32, 64, 128, 128), latent_channels=4, norm_num_groups=32,
                           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                           layers_per_block=2)
    return unet, sr_module, vae


def timed(fn, device) -> float:
    """Seconds of one call."""
    from stablesr.bench.memory import synchronize

    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_of(fn, device) -> float:
    """Peak MB (process RSS on CPU, max allocated on CUDA) during one call."""
    from stablesr.bench.memory import PeakMemory

    with PeakMemory(device) as memory:
        fn()
    return memory.peak_mb


class Phases:
    """The timed calls of one dtype (name -> zero-argument callable, inputs built once) and the steps
    derived from them (name -> [(tile batch phase, count)])."""

    def __init__(self, unet, sr_module, vae, *, dtype, device, seed: int) -> None:
        import torch

        from stablesr.models.sft_unet import SFTUNet
        from stablesr.pipelines.stablesr import make_guided_tile_fn

        self.unet, self.sr_module, self.vae, self.dtype, self.device = unet, sr_module, vae, dtype, device
        self.generator = torch.Generator().manual_seed(seed)
        self.context = self._randn(1, 77, unet.config.cross_attention_dim)
        self.sft_unet = SFTUNet(unet, sr_module)
        self.tile_fn = make_guided_tile_fn(self.sft_unet, self.context, None, 1.0)
        self.t = 999
        self.cpu_kernels = True
        self.packing = True
        self.calls: dict[str, object] = {}
        self.derived: dict[str, list[tuple[str, int]]] = {}

    def _randn(self, *shape):
        import torch

        return torch.randn(*shape, generator=self.generator).to(self.device, self.dtype)

    def add_steps(self, image_sizes: list[int], batch_size: int, whole: bool) -> None:
        """One row per output size: a timed aggregated step, or (default, more than one tile) the sum of
        timed tile batches, as the step's tile_fn calls are its cost."""
        from stablesr.tiling.aggregation import TiledDenoiser
        from stablesr.tiling.grid import window_grid

        for size in image_sizes:
            latent = size // 8
            tiles = len(window_grid(latent, latent, tile_size=TILE, tile_overlap=OVERLAP))
            label = f"step {size} ({tiles} tile{'s' * (tiles > 1)})"
            if whole:
                x_t, lr_latent = self._randn(1, 4, latent, latent), self._randn(1, 4, latent, latent)
                model = TiledDenoiser(self.tile_fn, lr_latent, tile_size=TILE, tile_overlap=OVERLAP,
                                      batch_size=batch_size)
                self.calls[label] = lambda m=model, x=x_t: m(x, self.t)
                continue
            full, rest = divmod(tiles, batch_size)
            parts = [(batch_size, full)] * (full > 0) + [(rest, 1)] * (rest > 0)
            label += " from batches" if tiles > 1 else ""  # one tile: the step is one tile_fn call
            self.derived[label] = [(self._tile_batch(n), count) for n, count in parts]

    def _tile_batch(self, n: int) -> str:
        """The phase of one tile_fn call on n tiles (the 512 step when n = 1); added once per n."""
        name = f"tile batch of {n}"
        if name not in self.calls:
            x_t, lr_latent = self._randn(n, 4, TILE, TILE), self._randn(n, 4, TILE, TILE)
            self.calls[name] = lambda: self.tile_fn(x_t, lr_latent, self.t)
        return name

    def add_guided_step(self) -> None:
        """The one-tile step with classifier-free guidance: uncond and cond passes in one batch of 2."""
        from stablesr.pipelines.stablesr import make_guided_tile_fn

        guided = make_guided_tile_fn(self.sft_unet, self.context, self._randn(*self.context.shape), 7.0)
        x_t, lr_latent = self._randn(1, 4, TILE, TILE), self._randn(1, 4, TILE, TILE)
        self.calls["step 512 (1 tile), guidance"] = lambda: guided(x_t, lr_latent, self.t)

    def add_baseline(self) -> None:
        import torch

        x_t = self._randn(1, 4, TILE, TILE)
        t = torch.tensor([self.t], device=self.device)
        self.calls[BASELINE] = lambda: self.unet(x_t, t, self.context).sample

    def add_decodes(self, sizes: list[int]) -> None:
        import torch

        from stablesr.configs import UpscaleSettings
        from stablesr.tiling.vae import decode_tiled

        tile, overlap = UpscaleSettings().vae_decode_tiles(8)
        for size in sizes:
            latent = self._randn(1, 4, size // 8, size // 8).float()
            image = (torch.rand(1, 3, size, size, generator=self.generator) * 2 - 1).to(self.device)
            self.calls[f"decode {size} plain AutoencoderKL (no CFW)"] = lambda z=latent: self.vae.decode(z).sample
            self.calls[f"decode {size} (tiled CFW, w=0.5)"] = (
                lambda z=latent, c=image: decode_tiled(self.vae, z, tile_size=tile, tile_overlap=overlap,
                                                      cond_image=c, fidelity=0.5))
            if size <= tile * 8:  # one window: the pipeline passes the features of its encode pass
                features = self.vae.encode_with_features(image)[1]
                self.calls[f"decode {size} (CFW, w=0.5, features from the encode)"] = (
                    lambda z=latent, c=image, f=features: decode_tiled(
                        self.vae, z, tile_size=tile, tile_overlap=overlap, cond_image=c, fidelity=0.5,
                        cond_features=f))

    def run(self, name: str) -> float:
        """Seconds of one call of phase `name`. Our phases run with the pipeline's CPU kernels (`ConvLinear`,
        unless `cpu_kernels` is off; the steps with packed weights too, as a pipeline run of 20 or more steps
        holds them, unless `packing` is off); the baseline and the plain AutoencoderKL decode with torch's own."""
        from stablesr.models.cpu_kernels import packed_weights, use_conv_linears

        ours = self.cpu_kernels and name != BASELINE and "plain AutoencoderKL" not in name
        for module in (self.unet, self.sr_module, self.vae):
            use_conv_linears(module, ours)
        packed = ours and self.packing and self.device.type == "cpu" and name.startswith(("step", "tile"))
        with packed_weights([self.unet, self.sr_module] if packed else []):  # packing itself is not timed
            return timed(self.calls[name], self.device)


def step_error(reference, other, *, device, seed: int) -> tuple[float, float, float]:
    """(max |diff|, mean |diff|, max |reference|) of one 64x64 step of two dtypes on the same inputs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x_t, lr_latent = torch.randn(2, 1, 4, TILE, TILE, generator=generator).to(device)
    outputs = []
    for phases in (reference, other):
        cast = dict(device=device, dtype=phases.dtype)
        outputs.append(phases.tile_fn(x_t.to(**cast), lr_latent.to(**cast), phases.t).float())
    diff = (outputs[1] - outputs[0]).abs()
    return diff.max().item(), diff.mean().item(), outputs[0].abs().max().item()


def run(args: argparse.Namespace) -> int:
    import torch

    from stablesr.cli.common import resolve_device

    device = resolve_device(args.device)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    names = [name.strip() for name in args.dtypes.split(",")]
    image_sizes = [int(s) for s in args.image_sizes.split(",") if s.strip()]
    decode_sizes = [int(s) for s in args.decode_sizes.split(",") if s.strip()]
    torch.manual_seed(args.seed)
    runtime_mb = _current_mb(device)
    start = time.perf_counter()
    unet, sr_module, vae = (m.to(device).eval().requires_grad_(False) for m in build_random_models(args.size))
    params = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (unet, sr_module, vae)]
    print(f"models ({args.size}, random weights, built in {time.perf_counter() - start:.1f} s): "
          f"UNet {params[0]:.1f} M, SR module (encoder + SFT) {params[1]:.1f} M, CFW VAE {params[2]:.1f} M parameters")
    from stablesr.models.cpu_kernels import allocator_tuned

    print(f"device {device}, threads {torch.get_num_threads()}, {args.rounds} interleaved rounds (median, min-max); "
          f"latent tile {TILE}, overlap {OVERLAP}, {args.tile_batch_size} tiles per call; VAE in fp32; "
          f"our linear layers: {'torch' if args.torch_kernels else 'ConvLinear on CPU'}; "
          f"our steps' large fp32 weights: {'plain' if args.no_packing or args.torch_kernels else 'packed'}; "
          f"allocator {'tuned' if allocator_tuned() else 'as started'} (all phases)")
    with torch.no_grad():
        return _run(args, unet, sr_module, vae, [(name, dtypes[name]) for name in names], device, image_sizes,
                    decode_sizes, runtime_mb)


def _run(args, unet, sr_module, vae, dtypes, device, image_sizes, decode_sizes, runtime_mb) -> int:
    import copy

    copies = [(unet, sr_module)] + [(copy.deepcopy(unet), copy.deepcopy(sr_module)) for _ in dtypes[1:]]
    phases = {}
    for (name, dtype), models in zip(dtypes, copies):  # copies taken before any hook or cast
        phases[name] = Phases(*(m.to(dtype=dtype) for m in models), vae, dtype=dtype, device=device, seed=args.seed)
        phases[name].cpu_kernels = not args.torch_kernels
        phases[name].packing = not args.no_packing
        phases[name].add_steps(image_sizes, args.tile_batch_size, args.whole_steps)
        if args.guidance:
            phases[name].add_guided_step()
    reference = dtypes[0][0]
    phases[reference].add_baseline()
    phases[reference].add_decodes(decode_sizes)
    errors = {name: step_error(phases[reference], phases[name], device=device, seed=args.seed)
              for name, _ in dtypes[1:]}
    fixed_mb = runtime_mb + _weights_mb(vae)
    peaks = {}  # the first call of every phase is its warm-up and its memory probe
    for name, p in phases.items():
        own_mb = fixed_mb + _weights_mb(p.unet, p.sr_module)
        for phase in p.calls:
            rise = _rise_mb(lambda: p.run(phase), device)
            peaks[name, phase] = own_mb + rise if phase != BASELINE and not phase.startswith("decode") else None
    times = {(name, phase): [] for name, p in phases.items() for phase in p.calls}
    for _ in range(args.rounds):
        for name, p in phases.items():
            for phase in p.calls:
                times[name, phase].append(p.run(phase))
    for name, p in phases.items():  # steps from batches: sums of the tile batches' times, round by round
        for step, parts in p.derived.items():
            times[name, step] = [sum(times[name, phase][i] * count for phase, count in parts)
                                 for i in range(args.rounds)]
            peaks[name, step] = max(peaks[name, phase] for phase, _ in parts)
    _print_table(times, peaks, errors, reference)
    return 0


def _weights_mb(*modules) -> float:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]) / 2**20


def _rise_mb(fn, device) -> float:
    """MB the process grows by during fn (CPU RSS, CUDA allocated): the step's working memory."""
    return peak_of(fn, device) - _current_mb(device)


def _current_mb(device) -> float:
    import psutil
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def _print_table(times, peaks, errors, reference) -> None:
    baseline = statistics.median(times[reference, BASELINE])
    print(f"baseline: {BASELINE}, {reference}: {baseline * 1000:.0f} ms (median)")
    print(f"  {'dtype':5s} {'phase':40s} {'median ms':>10s} {'(min-max)':>17s} {'x baseline':>10s} "
          f"{'x ' + reference:>9s} {'peak MB':>8s}")
    dtypes = list(dict.fromkeys(name for name, _ in times))
    for (name, phase), samples in sorted(times.items(), key=lambda item: _row_order(*item[0], dtypes)):
        median = statistics.median(samples)
        ref = times.get((reference, phase))
        vs_ref = f"{median / statistics.median(ref):9.2f}" if name != reference and ref else " " * 9
        peak = peaks.get((name, phase))
        peak_text = f"{peak:8.0f}" if peak is not None else " " * 8
        spread = f"({min(samples) * 1000:.0f}-{max(samples) * 1000:.0f})"
        print(f"  {name:5s} {phase:40s} {median * 1000:10.0f} {spread:>17s} {median / baseline:10.2f} "
              f"{vs_ref} {peak_text}")
    for name, (max_diff, mean_diff, ref_max) in errors.items():
        print(f"  {name} step output vs {reference} (one tile, t=999): max |diff| {max_diff:.4f}, mean |diff| "
              f"{mean_diff:.5f}, max |{reference}| {ref_max:.3f}")
    print("  peak MB: process memory before any model + VAE + that dtype's UNet and SR module + the rise during "
          "the call (a step from batches: its largest batch), i.e. a process holding one dtype")


def _row_order(name: str, phase: str, dtypes: list[str]) -> tuple:
    kind = 0 if phase == BASELINE else 1 if phase.startswith(("step", "tile")) else 2
    size = int(phase.split()[1].rstrip(",")) if phase.startswith(("step", "decode")) else 0
    return kind, phase.startswith("tile"), size, phase, dtypes.index(name)
