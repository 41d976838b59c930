"""Complete runs against the official code: per-tile network outputs (e), the DDPM/DDIM chains h1-h4 and
the end-to-end case i through `StableSRPipeline`, replaying the official noise tapes.

Tolerances (fixtures/parity/README.md): single network evaluations 1e-4 * max(1, max|ref|),
multi-step chains 1e-3 * max(1, max|ref|).
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close_scaled
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


@torch.no_grad()
def test_e_per_tile_network_outputs(parity_cases, parity_meta, sft_unet):
    cases = parity_cases
    context = cases["b.context"]
    for k, window in enumerate(parity_meta["canvas_e"]["tiles_in_official_order"]):
        crop = (slice(None), slice(None), slice(window["y0"], window["y1"]), slice(window["x0"], window["x1"]))
        out = sft_unet(cases["e.x_t"][crop], torch.tensor([666]), context, cases["e.lr_latent"][crop])
        assert_close_scaled(out, cases[f"e.ddpm.N4.i2.tile{k:02d}.eps"], SINGLE, f"e tile {k}")


@torch.no_grad()
def test_h1_ddpm_chain_untiled(parity_cases, sft_unet):
    cases = parity_cases
    lr, context = cases["a.lr_latent_32"], cases["b.context"]
    x_T = q_sample(lr, ALPHAS_CUMPROD[999].item(), cases["h1.noise.000"])
    assert_close_scaled(x_T, cases["h1.x_T"], SINGLE, "h1.x_T")
    steps = []
    final = sample_ddpm(EpsDenoiser(lambda x, t: sft_unet(x, torch.tensor([t]), context, lr)), cases["h1.x_T"],
                        respaced_schedule(betas_scaled_linear(), 4, faithful=True),
                        noise_sampler=tape(cases, "h1", 1), callback=recorder(steps))
    for k, (x, _) in enumerate(steps):
        assert_close_scaled(x, cases[f"h1.step{k}.x_out"], CHAIN, f"h1.step{k}")
    assert_close_scaled(final, cases["h1.final"], CHAIN, "h1.final")


def canvas_denoiser(sft_unet, cases, *, guidance_scale=1.0):
    tile_fn = make_guided_tile_fn(sft_unet, cases["b.context"],
                                  cases["e.neg_context"] if guidance_scale != 1.0 else None, guidance_scale)
    return EpsDenoiser(TiledDenoiser(tile_fn, cases["e.lr_latent"], tile_size=32, tile_overlap=16, batch_size=1,
                                     faithful=True))


@torch.no_grad()
def test_h2_ddpm_chain_canvas(parity_cases, sft_unet):
    cases = parity_cases
    steps = []
    final = sample_ddpm(canvas_denoiser(sft_unet, cases), cases["h2.x_T"],
                        respaced_schedule(betas_scaled_linear(), 4, faithful=True),
                        noise_sampler=tape(cases, "h2", 1), callback=recorder(steps))
    for k, (x, _) in enumerate(steps):
        assert_close_scaled(x, cases[f"h2.step{k}.x_out"], CHAIN, f"h2.step{k}")
    assert_close_scaled(final, cases["h2.final"], CHAIN, "h2.final")


@pytest.mark.parametrize("case, eta, guidance_scale", [("h3", 0.0, 1.0), ("h4", 1.0, 7.0)])
@torch.no_grad()
def test_h3_h4_ddim_chain_canvas(parity_cases, sft_unet, case, eta, guidance_scale):
    cases = parity_cases
    steps = []
    final = sample_ddim(canvas_denoiser(sft_unet, cases, guidance_scale=guidance_scale), cases[f"{case}.noise.000"],
                        ddim_schedule(ALPHAS_CUMPROD, 4, eta=eta, grid="official"),
                        noise_sampler=tape(cases, case, 1), callback=recorder(steps))
    for k, (x, x0_pred) in enumerate(steps):
        assert_close_scaled(x, cases[f"{case}.step{k}.x_prev"], CHAIN, f"{case}.step{k}.x_prev")
        assert_close_scaled(x0_pred, cases[f"{case}.step{k}.pred_x0"], CHAIN, f"{case}.step{k}.pred_x0")
    assert_close_scaled(final, cases[f"{case}.final"], CHAIN, f"{case}.final")


@torch.no_grad()
def test_i_end_to_end_pipeline(parity_cases, tiny_models):
    cases = parity_cases
    unet, sr_module, vae = tiny_models
    pipe = StableSRPipeline(unet=unet, sr_module=sr_module, vae=vae, scheduler=make_scheduler("epsilon"),
                            prompt_embeds=PromptEmbeddings.from_tensors({"null": cases["b.context"]}, {"null": ""}))
    image = (cases["i.lr_image"] + 1) / 2  # the pipeline takes [0, 1]
    out = pipe(image, upscale=4, num_inference_steps=4, sampler="ddpm", fidelity=0.5, color_fix="wavelet",
               tile_size=16, tile_overlap=8, tile_batch_size=1, vae_tile_size=1024, start="lr", faithful=True,
               noise_sampler=tape(cases, "i", 0), output_type="pt", progress=False).images
    assert_close_scaled(out, cases["i.im_sr"], CHAIN, "i.im_sr")
