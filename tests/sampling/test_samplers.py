"""Samplers: parameterisation round trips, exact-denoiser recovery, noise-tape order, diffusers cross-check."""

import pytest
import torch

from conftest import FLOAT32_REL
from stablesr.sampling.denoisers import EpsDenoiser, predict_x0_and_eps, wrap_model
from stablesr.sampling.samplers import (
    ddpm_step,
    default_noise_sampler,
    q_sample,
    sample_ddim,
    sample_ddpm,
    tape_noise_sampler,
)
from stablesr.sampling.schedules import (
    alphas_cumprod_from_betas,
    betas_scaled_linear,
    ddim_schedule,
    respaced_schedule,
)

ALPHA_BAR = alphas_cumprod_from_betas(betas_scaled_linear())


def _latent(seed: int, shape=(2, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _toy_model(x_t: torch.Tensor, t: int) -> torch.Tensor:
    """A deterministic stand-in for the network: depends on x_t and t."""
    return 0.3 * x_t + 0.01 * t * torch.tanh(x_t)


_toy_denoiser = EpsDenoiser(_toy_model)


def _oracle_denoiser(x0: torch.Tensor, *, prediction_type: str = "epsilon"):
    """The Denoiser of a network that returns the exact eps (v, x0) for a known clean sample x0."""

    def model(x_t: torch.Tensor, t: int) -> torch.Tensor:
        alpha_bar = ALPHA_BAR[t].item()
        eps = (x_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5
        outputs = {"epsilon": eps, "v_prediction": alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0, "sample": x0}
        return outputs[prediction_type]

    return wrap_model(model, prediction_type)


def test_q_sample_known_value():
    x0, noise = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0)
    assert q_sample(x0, 0.36, noise).item() == pytest.approx(0.6 * 2.0 - 0.8 * 1.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predict_x0_and_eps_round_trip(prediction_type):
    x0, eps = _latent(0).double(), _latent(1).double()
    alpha_bar = 0.3
    x_t = q_sample(x0, alpha_bar, eps)
    model_out = {"epsilon": eps, "v_prediction": alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0,
                 "sample": x0}[prediction_type]
    x0_pred, eps_pred = predict_x0_and_eps(model_out, x_t, alpha_bar, prediction_type=prediction_type)
    assert torch.allclose(x0_pred, x0, atol=1e-12) and torch.allclose(eps_pred, eps, atol=1e-12)


def test_predict_x0_per_sample_alpha_bar_tensor():
    x0, eps = _latent(0), _latent(1)
    alpha_bar = torch.tensor([0.9, 0.1], dtype=torch.float64).view(2, 1, 1, 1)
    x_t = q_sample(x0, alpha_bar, eps)
    x0_pred, _ = predict_x0_and_eps(eps, x_t, alpha_bar, prediction_type="epsilon")
    assert x0_pred.dtype == torch.float32
    assert torch.allclose(x0_pred, x0, atol=1e-5)
    with pytest.raises(ValueError):
        predict_x0_and_eps(eps, x_t, 0.5, prediction_type="flow")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddpm_with_exact_denoiser_returns_x0(prediction_type):
    x0 = _latent(2)
    schedule = respaced_schedule(betas_scaled_linear(), 4)
    x_T = q_sample(x0, ALPHA_BAR[999].item(), _latent(3))
    result = sample_ddpm(_oracle_denoiser(x0, prediction_type=prediction_type), x_T, schedule,
                         generator=torch.Generator().manual_seed(0))
    assert torch.allclose(result, x0, atol=1e-4)


def test_ddim_consistent_eta0_with_exact_denoiser_returns_x0():
    x0 = _latent(4)
    x_T = q_sample(x0, ALPHA_BAR[999].item(), _latent(5))
    result = sample_ddim(_oracle_denoiser(x0), x_T, ddim_schedule(ALPHA_BAR, 5))
    assert torch.allclose(result, x0, atol=1e-4)
    official = sample_ddim(_oracle_denoiser(x0), x_T, ddim_schedule(ALPHA_BAR, 4, grid="official"))
    assert not torch.allclose(official, x0, atol=1e-2)  # the mixed official grids are not exact


def test_ddpm_seeded_determinism_and_callback():
    schedule = respaced_schedule(betas_scaled_linear(), 4)
    calls = []
    first = sample_ddpm(_toy_denoiser, _latent(6), schedule, generator=torch.Generator().manual_seed(7),
                        callback=lambda i, t, x, x0: calls.append((i, t, x.shape, x0.shape)))
    again = sample_ddpm(_toy_denoiser, _latent(6), schedule, generator=torch.Generator().manual_seed(7))
    other = sample_ddpm(_toy_denoiser, _latent(6), schedule, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.allclose(first, other)
    assert [(i, t) for i, t, _, _ in calls] == [(3, 999), (2, 666), (1, 333), (0, 0)]
    assert all(shape == (2, 4, 8, 8) for _, _, shape, _ in calls)


def test_ddpm_tape_order_one_draw_per_step_last_masked():
    schedule = respaced_schedule(betas_scaled_linear(), 4)
    tape = [_latent(10 + k) for k in range(4)]
    result = sample_ddpm(_toy_denoiser, _latent(9), schedule, noise_sampler=tape_noise_sampler(tape))
    changed_last = sample_ddpm(_toy_denoiser, _latent(9), schedule,
                               noise_sampler=tape_noise_sampler(tape[:3] + [100 * tape[3]]))
    changed_first = sample_ddpm(_toy_denoiser, _latent(9), schedule,
                                noise_sampler=tape_noise_sampler([100 * tape[0]] + tape[1:]))
    assert torch.equal(result, changed_last) and not torch.allclose(result, changed_first)
    with pytest.raises(RuntimeError):
        sample_ddpm(_toy_denoiser, _latent(9), schedule, noise_sampler=tape_noise_sampler(tape[:3]))
    with pytest.raises(ValueError):
        sample_ddpm(_toy_denoiser, _latent(9), schedule, noise_sampler=tape_noise_sampler(tape),
                    generator=torch.Generator())


def test_ddim_eta0_deterministic_eta1_draws_noise():
    for eta, depends_on_seed in ((0.0, False), (1.0, True)):
        schedule = ddim_schedule(ALPHA_BAR, 4, eta=eta)
        runs = [sample_ddim(_toy_denoiser, _latent(11), schedule, generator=torch.Generator().manual_seed(s))
                for s in (0, 1)]
        assert torch.equal(runs[0], runs[1]) is not depends_on_seed


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_eta1_consistent_equals_ddpm(prediction_type):
    """With eta = 1 and consistent grids, DDIM's update is the DDPM posterior (Song et al. Sec. 4.1)."""
    denoiser = wrap_model(_toy_model, prediction_type)
    ddpm = sample_ddpm(denoiser, _latent(12), respaced_schedule(betas_scaled_linear(), 6),
                       generator=torch.Generator().manual_seed(3))
    ddim = sample_ddim(denoiser, _latent(12), ddim_schedule(ALPHA_BAR, 6, eta=1.0),
                       generator=torch.Generator().manual_seed(3))
    assert torch.allclose(ddim, ddpm, atol=1e-5, rtol=1e-5)


def _diffusers_scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="linspace",
        clip_sample=False, variance_type="fixed_small", prediction_type=prediction_type,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_step_matches_diffusers(prediction_type):
    scheduler = _diffusers_scheduler(prediction_type)
    scheduler.set_timesteps(4)
    schedule = respaced_schedule(betas_scaled_linear(), 4)
    x_t, model_out = _latent(13), _latent(14)
    expected = scheduler.step(model_out, 999, x_t, generator=torch.Generator().manual_seed(5)).prev_sample
    noise = default_noise_sampler(torch.Generator().manual_seed(5))(x_t)
    x0_pred, _ = predict_x0_and_eps(model_out, x_t, float(schedule.alphas_cumprod[3]), prediction_type=prediction_type)
    x_prev = ddpm_step(x0_pred, x_t, schedule, 3, noise)
    assert (x_prev - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_sample_ddpm_chain_matches_diffusers_loop():
    scheduler = _diffusers_scheduler("epsilon")
    scheduler.set_timesteps(20)
    generator = torch.Generator().manual_seed(21)
    x = _latent(15)
    for t in scheduler.timesteps:
        x = scheduler.step(_toy_model(x, int(t)), t, x, generator=generator).prev_sample
    ours = sample_ddpm(_toy_denoiser, _latent(15), respaced_schedule(betas_scaled_linear(), 20),
                       generator=torch.Generator().manual_seed(21))
    assert (ours - x).abs().max().item() <= FLOAT32_REL * max(1.0, x.abs().max().item())
