"""CCSR truncated sampling: the exact visited timesteps of the reference tables, evaluations, noise order."""

import math

import pytest
import torch

from stablesr.sampling.denoisers import EpsDenoiser
from stablesr.sampling.samplers import ddpm_step, q_sample, tape_noise_sampler
from stablesr.sampling.schedules import alphas_cumprod_from_betas, betas_scaled_linear, respaced_schedule
from stablesr.sampling.truncated import plan_ccsr_v1, plan_ccsr_v2, posterior_step, sample_truncated

ALPHA_BAR = alphas_cumprod_from_betas(betas_scaled_linear())


# The reference table prints 500 for the 8th loop step of the 45-step row, from round(22 * 999 / 44) =
# round(499.5); the official respacing accumulates the stride in floating point (guided-diffusion's
# space_timesteps, also in CCSR's model/q_sampler.py), which reaches 499.4999999999998 -> 499.
@pytest.mark.parametrize(("steps", "renoise", "loop", "nfe"), [
    (45, 658, [658, 636, 613, 590, 568, 545, 522, 499, 477, 454, 431, 409, 386, 363, 341], 16),
    (30, 655, [655, 620, 586, 551, 517, 482, 448, 413, 379, 344], 11),
    (15, 642, [642, 571, 500, 428, 357], 6),
])
def test_v1_visits_the_reference_table(steps, renoise, loop, nfe):
    plan = plan_ccsr_v1(steps, 0.6667, 0.3333)
    assert plan.visited == [999, *loop]
    assert plan.renoise_t == renoise and plan.output_t == loop[-1] and plan.num_evaluations == nfe
    assert plan_ccsr_v1() == plan_ccsr_v1(45, 0.6667, 0.3333)


def test_v1_steps_go_to_the_next_respaced_grid_point():
    plan = plan_ccsr_v1(15)
    assert [prev for _, prev in plan.loop] == [571, 500, 428, 357, 285]


@pytest.mark.parametrize(("steps", "t_max", "t_min", "renoise", "loop"), [
    (1, 0.6666, 0.0, None, []),
    (6, 0.6667, 0.5, 499, [499]),
    (10, 0.6667, 0.5, 601, [601, 501]),
    (4, 0.6667, 0.5, 501, [501]),
])
def test_v2_visits_the_reference_table(steps, t_max, t_min, renoise, loop):
    plan = plan_ccsr_v2(steps, t_max, t_min)
    assert plan.visited == [999, *loop] and plan.renoise_t == renoise
    assert plan.output_t == (loop[-1] if loop else 999) and plan.num_evaluations == 1 + len(loop)


def test_v2_steps_by_the_leading_stride_to_minus_one_at_the_end():
    assert plan_ccsr_v2(10, 0.6667, 0.5).loop == ((601, 501), (501, 401))
    assert plan_ccsr_v2(4, 0.75, 0.0).loop == ((501, 251), (251, 1), (1, -249))


@pytest.mark.parametrize("bad", [(45, 0.3, 0.3), (45, 1.0, 0.3), (45, 0.5, -0.1), (0, 0.6, 0.3), (10, 0.12, 0.08)])
def test_plans_refuse_empty_or_bad_intervals(bad):
    with pytest.raises(ValueError):
        plan_ccsr_v1(*bad)


def test_posterior_step_equals_the_respaced_ddpm_step():
    schedule = respaced_schedule(betas_scaled_linear(), 45)
    x0, x_t, noise = (torch.randn(1, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
                      for s in range(3))
    for i in (29, 15, 1):
        t, t_prev = int(schedule.timesteps[i]), int(schedule.timesteps[i - 1])
        ours = posterior_step(x0, x_t, float(ALPHA_BAR[t]), float(ALPHA_BAR[t_prev]), noise)
        torch.testing.assert_close(ours, ddpm_step(x0, x_t, schedule, i, noise), rtol=1e-12, atol=1e-12)
    assert torch.equal(posterior_step(x0, x_t, float(ALPHA_BAR[1]), 1.0, noise), x0)  # last step: x0 exactly


class Recorder:
    """An eps model that records (t, alpha_bar) and returns a fixed function of x_t and t."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t):
        self.calls.append(t)
        return 0.5 * x_t + 0.001 * t


def test_sampler_evaluates_the_plan_and_outputs_x0_of_the_last_step():
    plan = plan_ccsr_v1(15)
    model = Recorder()
    x_T = torch.randn(1, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tape = [torch.randn(1, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            for s in range(1, 6)]
    out = sample_truncated(EpsDenoiser(model), x_T, ALPHA_BAR, plan, noise_sampler=tape_noise_sampler(tape))
    assert model.calls == [999, 642, 571, 500, 428, 357]
    # by hand: x0 jump, fresh re-noise, 4 ancestral steps (draws 2..5), x0 at 357
    denoise = EpsDenoiser(Recorder())
    x0, _ = denoise(x_T, 999, float(ALPHA_BAR[999]))
    x = q_sample(x0, float(ALPHA_BAR[642]), tape[0])
    for k, (t, t_prev) in enumerate(plan.loop[:-1], start=1):
        x0, _ = denoise(x, t, float(ALPHA_BAR[t]))
        x = posterior_step(x0, x, float(ALPHA_BAR[t]), float(ALPHA_BAR[t_prev]), tape[k])
    expected, _ = denoise(x, 357, float(ALPHA_BAR[357]))
    assert torch.equal(out, expected)


def test_one_step_v2_returns_the_x0_jump_and_draws_nothing():
    model = Recorder()
    x_T = torch.ones(1, 4, 2, 2, dtype=torch.float64)
    out = sample_truncated(EpsDenoiser(model), x_T, ALPHA_BAR, plan_ccsr_v2(1), noise_sampler=tape_noise_sampler([]))
    a = float(ALPHA_BAR[999])
    eps = 0.5 + 0.999
    assert model.calls == [999]
    torch.testing.assert_close(out, torch.full_like(x_T, (1 - math.sqrt(1 - a) * eps) / math.sqrt(a)),
                               rtol=1e-12, atol=0)


def test_first_denoiser_makes_only_the_first_evaluation():
    main, first = Recorder(), Recorder()
    sample_truncated(EpsDenoiser(main), torch.zeros(1, 4, 2, 2), ALPHA_BAR, plan_ccsr_v2(10, 0.6667, 0.5),
                     first_denoiser=EpsDenoiser(first), generator=torch.Generator().manual_seed(0))
    assert first.calls == [999] and main.calls == [601, 501]
