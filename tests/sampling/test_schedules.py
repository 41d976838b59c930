"""Schedules and respacing: known numbers from the SD/StableSR references, identities, diffusers cross-check."""

import math

import pytest
import torch

from stablesr.sampling.schedules import (
    alphas_cumprod_from_betas,
    betas_scaled_linear,
    ddim_schedule,
    respace_timesteps,
    respaced_schedule,
)


def test_betas_scaled_linear_known_values():
    betas = betas_scaled_linear()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    roots = betas.sqrt()
    assert torch.allclose(roots.diff(), roots.diff()[:1].expand(999), rtol=1e-9)  # linear in sqrt(beta)
    alpha_bar = alphas_cumprod_from_betas(betas)
    assert alpha_bar[0].item() == pytest.approx(0.99915, rel=1e-9)
    assert alpha_bar[999].item() == pytest.approx(0.0046601, rel=1e-4)
    assert alpha_bar[999].sqrt().item() == pytest.approx(0.068265, rel=1e-4)
    assert (1 - alpha_bar[999]).sqrt().item() == pytest.approx(0.997667, rel=1e-6)


@pytest.mark.parametrize(
    ("num_steps", "head", "tail"),
    [(4, [0, 333, 666, 999], [999]), (200, [0, 5, 10], [994, 999]), (50, [0, 20, 41, 61], [979, 999]),
     (20, [0, 53, 105], [946, 999]), (1, [0], [0])],
)
def test_respace_timesteps_examples(num_steps, head, tail):
    timesteps = respace_timesteps(1000, num_steps)
    assert len(timesteps) == num_steps
    assert timesteps[: len(head)] == head and timesteps[-len(tail) :] == tail
    assert timesteps == sorted(timesteps)


def test_respace_full_is_identity_and_bad_counts_raise():
    assert respace_timesteps(1000, 1000) == list(range(1000))
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            respace_timesteps(1000, bad)


@pytest.mark.parametrize("num_steps", [4, 20, 50, 200])
def test_respace_matches_diffusers_linspace(num_steps):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        timestep_spacing="linspace", clip_sample=False, variance_type="fixed_small",
    )
    scheduler.set_timesteps(num_steps)
    assert sorted(scheduler.timesteps.tolist()) == respace_timesteps(1000, num_steps)


def test_respaced_schedule_float64_identities():
    betas = betas_scaled_linear()
    alpha_bar = alphas_cumprod_from_betas(betas)
    schedule = respaced_schedule(betas, 4)
    assert schedule.timesteps.tolist() == [0, 333, 666, 999]
    assert schedule.timesteps.dtype == torch.int64
    assert torch.equal(schedule.alphas_cumprod, alpha_bar[schedule.timesteps])
    assert torch.allclose(torch.cumprod(1 - schedule.betas, 0), schedule.alphas_cumprod, rtol=1e-12)
    assert schedule.betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert schedule.alphas_cumprod_prev[0].item() == 1.0
    assert schedule.posterior_variance[0].item() == 0.0
    assert schedule.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(1e-20))
    expected = schedule.betas * (1 - schedule.alphas_cumprod_prev) / (1 - schedule.alphas_cumprod)
    assert torch.allclose(schedule.posterior_variance, expected, rtol=1e-12)


def test_respacing_all_steps_reproduces_the_original_chain():
    betas = betas_scaled_linear()
    schedule = respaced_schedule(betas, 1000)
    assert torch.allclose(schedule.betas, betas, rtol=1e-9)
    # posterior mean of x_t given x0 = x_t = 1 is coef1 + coef2; for the unrespaced chain both are from betas
    alpha_bar = alphas_cumprod_from_betas(betas)
    coef2 = (1 - schedule.alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alpha_bar)
    assert torch.allclose(schedule.posterior_mean_coef2, coef2, rtol=1e-9)


def test_faithful_float32_derivation_differs_only_slightly():
    betas = betas_scaled_linear()
    faithful, exact = respaced_schedule(betas, 4, faithful=True), respaced_schedule(betas, 4)
    assert faithful.betas.dtype == torch.float32
    assert faithful.betas[0].item() == pytest.approx(0.00085002, abs=5e-9)  # README case c, 5 digits
    relative = ((faithful.betas.double() - exact.betas) / exact.betas).abs().max().item()
    assert 1e-6 < relative < 3e-5


def test_ddim_consistent_grid_identities():
    alpha_bar = alphas_cumprod_from_betas(betas_scaled_linear())
    schedule = ddim_schedule(alpha_bar, 4, eta=1.0)
    assert schedule.timesteps.tolist() == [0, 333, 666, 999]
    assert torch.equal(schedule.alphas, alpha_bar[schedule.timesteps])
    assert schedule.alphas_prev[0].item() == 1.0 and schedule.sigmas[0].item() == 0.0
    # eta = 1 makes the DDIM variance the DDPM posterior variance of the respaced chain
    ddpm = respaced_schedule(betas_scaled_linear(), 4)
    assert torch.allclose(schedule.sigmas**2, ddpm.posterior_variance, rtol=1e-10, atol=0)
    assert torch.count_nonzero(ddim_schedule(alpha_bar, 4, eta=0.0).sigmas) == 0


def test_ddim_official_grid_mixes_two_grids():
    alpha_bar = alphas_cumprod_from_betas(betas_scaled_linear())
    schedule = ddim_schedule(alpha_bar, 4, grid="official")
    assert schedule.timesteps.tolist() == [0, 333, 666, 999]  # what the network sees
    assert torch.equal(schedule.alphas, alpha_bar.float()[[0, 250, 500, 750]])  # what the update uses
    assert schedule.alphas_prev[0].item() == schedule.alphas[0].item()  # last step is an identity
    assert schedule.alphas.dtype == torch.float32 and schedule.sigmas.dtype == torch.float64
    with pytest.raises(ValueError):
        ddim_schedule(alpha_bar, 3, grid="official")
    with pytest.raises(ValueError):
        ddim_schedule(alpha_bar, 4, grid="uniform")
    with pytest.raises(ValueError):
        ddim_schedule(alpha_bar, 4, eta=-1.0)
