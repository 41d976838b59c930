"""DeeDSR's noise guidance: at a guided step the x0 estimate IS the LR latent and the DDIM step follows eq. 10-11."""

from __future__ import annotations

import torch

from stablesr.sampling.noise_guidance import first_timesteps, noise_guided
from stablesr.sampling.samplers import sample_ddim, tape_noise_sampler
from stablesr.sampling.schedules import alphas_cumprod_from_betas, betas_scaled_linear, ddim_schedule


class CountingModel:
    """A denoiser with a fixed, recognisable estimate; counts its calls and their timesteps."""

    def __init__(self) -> None:
        self.timesteps: list[int] = []

    def __call__(self, x_t, t, alpha_bar):
        self.timesteps.append(t)
        return 0.5 * x_t, 0.25 * x_t


def test_first_timesteps():
    assert first_timesteps(torch.tensor([0, 333, 666, 999]), 1) == [999]
    assert first_timesteps(torch.tensor([0, 333, 666, 999]), 2) == [999, 666]
    assert first_timesteps(torch.tensor([0, 333]), 0) == []


def test_guided_first_step_x0_is_the_lr_latent_and_the_model_is_skipped():
    torch.manual_seed(0)
    schedule = ddim_schedule(alphas_cumprod_from_betas(betas_scaled_linear()), 5, eta=1.0)
    lr_latent, x_T = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    tape = [torch.randn(1, 4, 6, 6) for _ in range(5)]
    model = CountingModel()
    denoiser = noise_guided(model, lr_latent, first_timesteps(schedule.timesteps, 1))
    seen = []
    sample_ddim(denoiser, x_T, schedule, noise_sampler=tape_noise_sampler(tape),
                callback=lambda i, t, x, x0_pred: seen.append((i, t, x, x0_pred)))
    i, t, x_after, x0_first = seen[0]
    assert (i, t) == (4, 999) and torch.equal(x0_first, lr_latent)
    assert model.timesteps == [749, 500, 250, 0]  # the guided step never calls the network
    # eq. 11 then eq. 10 (float64 coefficients, float32 tensors)
    a, a_prev, sigma = (float(v[4]) for v in (schedule.alphas, schedule.alphas_prev, schedule.sigmas))
    eps = (x_T - a**0.5 * lr_latent) / (1 - a) ** 0.5
    expected = a_prev**0.5 * lr_latent + (1 - a_prev - sigma**2) ** 0.5 * eps + sigma * tape[0]
    torch.testing.assert_close(x_after, expected, rtol=1e-5, atol=1e-6)
    # a guided step maps the LR latent's own forward diffusion back exactly: x_t = q(z_lr) -> eps = the noise
    noise = torch.randn(1, 4, 6, 6)
    x0, eps = denoiser(a**0.5 * lr_latent + (1 - a) ** 0.5 * noise, 999, a)
    assert torch.equal(x0, lr_latent)
    torch.testing.assert_close(eps, noise, rtol=1e-4, atol=1e-5)


def test_zero_guided_steps_is_plain_ddim():
    schedule = ddim_schedule(alphas_cumprod_from_betas(betas_scaled_linear()), 3, eta=0.0)
    x_T = torch.randn(1, 4, 4, 4)
    model = CountingModel()
    plain = sample_ddim(model, x_T, schedule, noise_sampler=lambda like: torch.zeros_like(like))
    guided = sample_ddim(noise_guided(model, torch.randn(1, 4, 4, 4), []), x_T, schedule,
                         noise_sampler=lambda like: torch.zeros_like(like))
    assert torch.equal(plain, guided)
