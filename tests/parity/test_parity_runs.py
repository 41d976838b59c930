"""Complete runs against the official code: per-tile network outputs (e), the DDPM/DDIM chains h1-h4 and
the end-to-end case i through `StableSRPipeline`, replaying the official noise tapes.

Tolerances (fixtures/parity/README.md): single network evaluations 1e-4 * max(1, max|ref|),
multi-step chains 1e-3 * max(1, max|ref|).
"""

from __future__ import annotations

import pytest
import torch
from fixture_cases import canvas, canvas_steps, chains, end_to_end, ids, load_meta

from conftest import assert_close_scaled
from stablesr.configs import UpscaleSettings
from stablesr.models.sft_unet import SFTUNet
from stablesr.models.text_encoder import PromptEmbeddings
from stablesr.pipelines.stablesr import StableSRPipeline, make_guided_tile_fn
from stablesr.sampling.denoisers import EpsDenoiser
from stablesr.sampling.samplers import q_sample, sample_ddim, sample_ddpm
from stablesr.sampling.schedules import betas_scaled_linear, ddim_schedule, respaced_schedule
from stablesr.tiling.aggregation import TiledDenoiser
from stablesr.weights.keymap_unet import encoder_config_from_ldm, unet_config_from_ldm
from stablesr.weights.keymap_vae import vae_config_from_ldm
from stablesr.weights.loading import Parts, build_sr_module, build_unet, build_vae, make_scheduler

SINGLE, CHAIN = 1e-4, 1e-3


@pytest.fixture(scope="module")
def tiny_models(stablesr_tiny_state, cfw_tiny_state, tiny_config):
    unet_params = tiny_config["unet_config.params"]
    encoder_params = tiny_config["structcond_stage_config.params"]
    unet = build_unet({k: v for k, v in stablesr_tiny_state.items() if ".spade." not in k
                       and k.startswith("model.diffusion_model.")}, unet_config_from_ldm(unet_params))
    sr_state = {k: v for k, v in stablesr_tiny_state.items() if ".spade." in k or k.startswith("structcond")}
    sr_module = build_sr_module(sr_state, unet, encoder_config_from_ldm(encoder_params))
    ddconfig = tiny_config["ddconfig (first_stage_config & CFW)"]
    vae, _ = build_vae(Parts(cfw=dict(cfw_tiny_state)), vae_config_from_ldm(ddconfig, embed_dim=4))
    return unet, sr_module, vae


@pytest.fixture(scope="module")
def sft_unet(tiny_models):
    unet, sr_module, _ = tiny_models
    return SFTUNet(unet, sr_module)


def tape(cases: dict, prefix: str, start: int):
    """noise_sampler that replays `prefix.noise.NNN` from index `start` in order."""
    draws = iter(cases[f"{prefix}.noise.{k:03d}"] for k in range(start, 100) if f"{prefix}.noise.{k:03d}" in cases)
    return lambda like: next(draws)


def recorder(store: list):
    return lambda i, t, x, x0_pred: store.append((x.clone(), x0_pred.clone()))


ALPHAS_CUMPROD = torch.cumprod(1 - betas_scaled_linear(), 0)
META = load_meta()


@pytest.mark.parametrize("step", [s for s in canvas_steps(META) if s.tiles[0].endswith(".eps")], ids=ids)
@torch.no_grad()
def test_e_per_tile_network_outputs(parity_cases, sft_unet, step):
    cases = parity_cases
    t = step.t
    if t < 0:  # a DDIM step that leaves the timestep to the schedule
        t = int(ddim_schedule(ALPHAS_CUMPROD, step.steps, eta=step.eta, grid="official").timesteps[step.index])
    windows = canvas(META, "canvas_e").windows
    assert len(windows) == len(step.tiles)
    for (y0, y1, x0, x1), name in zip(windows, step.tiles):
        crop = (slice(None), slice(None), slice(y0, y1), slice(x0, x1))
        out = sft_unet(cases["e.x_t"][crop], torch.tensor([t]), cases["b.context"], cases["e.lr_latent"][crop])
        assert_close_scaled(out, cases[name], SINGLE, name)


def chain_model(sft_unet, cases, chain):
    """model(x_t, t): the SFT UNet on the whole latent, or aggregated over the chain's tiles."""
    negative = cases[chain.negative_context] if chain.guidance_scale != 1.0 else None
    tile_fn = make_guided_tile_fn(sft_unet, cases[chain.context], negative, chain.guidance_scale)
    if chain.tile_size is None:
        return lambda x, t: tile_fn(x, cases[chain.lr_latent], t)
    return TiledDenoiser(tile_fn, cases[chain.lr_latent], tile_size=chain.tile_size, tile_overlap=chain.tile_overlap,
                         batch_size=chain.tile_batch_size, faithful=True)


@pytest.mark.parametrize("chain", chains(META), ids=ids)
@torch.no_grad()
def test_h_complete_chains(parity_cases, sft_unet, chain):
    """DDPM / DDIM runs, untiled or tiled, replaying the official noise tape (noise.000 makes x_T)."""
    cases = parity_cases
    if chain.x_T is not None:  # x_T = q_sample(lr, alpha_bar_999, noise.000), stored
        x_T = q_sample(cases[chain.lr_latent], ALPHAS_CUMPROD[-1].item(), cases[f"{chain.name}.noise.000"])
        assert_close_scaled(x_T, cases[chain.x_T], SINGLE, chain.x_T)
        x_T = cases[chain.x_T]
    else:
        x_T = cases[f"{chain.name}.noise.000"]
    denoiser = EpsDenoiser(chain_model(sft_unet, cases, chain))
    steps, noise = [], tape(cases, chain.name, 1)
    if chain.sampler == "ddpm":
        schedule = respaced_schedule(betas_scaled_linear(), chain.steps, faithful=True)
        final = sample_ddpm(denoiser, x_T, schedule, noise_sampler=noise, callback=recorder(steps))
    else:
        schedule = ddim_schedule(ALPHAS_CUMPROD, chain.steps, eta=chain.eta, grid="official")
        final = sample_ddim(denoiser, x_T, schedule, noise_sampler=noise, callback=recorder(steps))
    assert len(steps) == chain.steps == chain.num_draws - 1
    for k, (x, x0_pred) in enumerate(steps):
        for record in chain.records:
            name = f"{chain.name}.step{k}.{record}"
            assert_close_scaled(x0_pred if record == "pred_x0" else x, cases[name], CHAIN, name)
    assert_close_scaled(final, cases[f"{chain.name}.final"], CHAIN, f"{chain.name}.final")


@pytest.mark.parametrize("case", end_to_end(META), ids=ids)
@torch.no_grad()
def test_i_end_to_end_pipeline(parity_cases, tiny_models, case):
    cases = parity_cases
    unet, sr_module, vae = tiny_models
    pipe = StableSRPipeline(unet=unet, sr_module=sr_module, vae=vae, scheduler=make_scheduler("epsilon"),
                            prompt_embeds=PromptEmbeddings.from_tensors({"null": cases["b.context"]}, {"null": ""}))
    image = (cases[f"{case.name}.lr_image"] + 1) / 2  # the fixture's LR is in [-1, 1]; the pipeline takes [0, 1]
    assert case.canvas.latent_hw == tuple(cases[f"{case.name}.samples"].shape[-2:])
    settings = UpscaleSettings(upscale=case.upscale, num_inference_steps=case.steps, sampler="ddpm",
                               fidelity=case.fidelity, color_fix=case.color_fix, tile_size=case.canvas.tile_size,
                               tile_overlap=case.canvas.tile_overlap, tile_batch_size=1, start="lr", faithful=True)
    out = pipe(image, settings, noise_sampler=tape(cases, case.name, 0), progress=False).images
    assert_close_scaled(out, cases[f"{case.name}.im_sr"], CHAIN, f"{case.name}.im_sr")
