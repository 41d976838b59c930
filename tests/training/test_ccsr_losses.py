"""CCSR stage-1 losses against values computed by hand on tiny tensors."""

import math

import torch

from stablesr.training.ccsr_losses import loss_eps, losses_t_max, pred_x0, sample_truncated_t

# a toy schedule: alpha_bar at t is 1 - t / 1000 (float64 so the hand values are exact to 1e-12)
ALPHAS = 1.0 - torch.arange(1000, dtype=torch.float64) / 1000


def scale_model(c):
    """eps_theta(x_t, t) = c * x_t: every loss has a closed form."""
    return lambda x_t, t: c * x_t


def test_pred_x0_inverts_q_sample():
    z0, eps = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.3, 0.2], dtype=torch.float64)
    a = 0.36
    x_t = 0.6 * z0 + 0.8 * eps
    torch.testing.assert_close(pred_x0(x_t, eps, a), z0, rtol=1e-12, atol=1e-12)


def test_eps_loss_by_hand():
    z0 = torch.tensor([[[[1.0, 2.0]]]], dtype=torch.float64)  # (1, 1, 1, 2)
    noise = torch.tensor([[[[0.5, -0.5]]]], dtype=torch.float64)
    t = torch.tensor([360])  # alpha_bar 0.64: x_t = 0.8 z0 + 0.6 eps = [1.1, 1.3]
    loss = loss_eps(scale_model(0.5), z0, t, noise, ALPHAS)  # eps_pred [0.55, 0.65]; errors [0.05, 1.15]
    assert math.isclose(loss.item(), (0.05**2 + 1.15**2) / 2, rel_tol=1e-12)


def test_t_max_losses_by_hand():
    z0 = torch.tensor([[[[1.0]]]], dtype=torch.float64)
    n_T, n_tau = torch.tensor([[[[2.0]]]], dtype=torch.float64), torch.tensor([[[[-1.0]]]], dtype=torch.float64)
    # T = 999: a = 0.001; tau = 667: a = 0.333; eps = 0.5 x
    a_T, a_tau, c = 0.001, 0.333, 0.5
    x_T = math.sqrt(a_T) * 1.0 + math.sqrt(1 - a_T) * 2.0
    x0_T = (x_T - math.sqrt(1 - a_T) * c * x_T) / math.sqrt(a_T)
    x_tau = math.sqrt(a_tau) * x0_T + math.sqrt(1 - a_tau) * -1.0
    eps_tau = c * x_tau
    x0_tau = (x_tau - math.sqrt(1 - a_tau) * eps_tau) / math.sqrt(a_tau)
    v1 = losses_t_max(scale_model(c), z0, n_T, n_tau, ALPHAS, version="v1")
    v2 = losses_t_max(scale_model(c), z0, n_T, n_tau, ALPHAS, version="v2")
    assert math.isclose(v1["l_T"].item(), (x0_T - 1.0) ** 2, rel_tol=1e-12)
    assert math.isclose(v2["l_tmax"].item(), (x0_tau - 1.0) ** 2, rel_tol=1e-12)
    assert math.isclose(v1["l_tmax"].item(), (x0_tau - 1.0) ** 2 + (eps_tau + 1.0) ** 2, rel_tol=1e-12)
    assert math.isclose(v1["total"].item(), v1["l_T"].item() + v1["l_tmax"].item(), rel_tol=1e-12)


def test_gradient_flows_through_the_x0_jump():
    c = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    z0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    losses = losses_t_max(lambda x, t: c * x, z0, 2 * z0, -z0, ALPHAS, version="v2")
    (grad_both,) = torch.autograd.grad(losses["l_tmax"], c)
    # through x0_T: d l_tmax / dc differs from the gradient with the T evaluation detached

    def detached(x, t):
        return (c.detach() if int(t[0]) == 999 else c) * x

    (grad_tau_only,) = torch.autograd.grad(losses_t_max(detached, z0, 2 * z0, -z0, ALPHAS, version="v2")["l_tmax"], c)
    assert not math.isclose(grad_both.item(), grad_tau_only.item(), rel_tol=1e-6)


def test_truncated_timesteps_stay_below_t_max():
    t = sample_truncated_t(4096, 667, generator=torch.Generator().manual_seed(0))
    assert t.min().item() == 0 and t.max().item() == 666
