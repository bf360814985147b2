"""Loss math against hand-computed values, sign conventions, noise schedule, tie handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.errors import DataError
from training.data import select_pairs
from training.loss import diffusion_dpo_loss, per_sample_mse
from training.models import NoiseSchedule


def _errs(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_loss_is_log2_when_policy_equals_reference():
    errs_w, errs_l = _errs(0.3, 0.7, 1.1), _errs(0.5, 0.2, 0.9)
    loss, metrics = diffusion_dpo_loss(errs_w, errs_l, errs_w.clone(), errs_l.clone(), beta=5000.0)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-7)
    assert metrics["rewards/margins"].item() == 0.0
    assert metrics["implicit_accuracy"].item() == 0.5  # every margin is exactly 0: counted as half
    assert metrics["rewards/accuracies"].item() == 0.0  # trl's strict definition


def test_sigmoid_hand_computed():
    # Pair 1: policy improves the winner by 0.001 vs ref; loser unchanged -> h = -2500 * (-0.001) = 2.5
    # Pair 2: policy improves the loser by 0.0004 -> h = -2500 * (0 - (-0.0004)) = -1.0
    model_w, model_l = _errs(0.099, 0.2), _errs(0.3, 0.0996)
    ref_w, ref_l = _errs(0.100, 0.2), _errs(0.3, 0.1000)
    loss, m = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta=5000.0, loss_type="sigmoid")
    h = np.array([2.5, -1.0])
    expected = np.mean(np.log1p(np.exp(-h)))
    assert loss.item() == pytest.approx(expected, rel=1e-3)
    assert m["rewards/chosen"].item() == pytest.approx((2.5 + 0.0) / 2, rel=1e-3)
    assert m["rewards/rejected"].item() == pytest.approx((0.0 + 1.0) / 2, rel=1e-3)
    assert m["rewards/margins"].item() == pytest.approx(h.mean(), rel=1e-3)
    assert m["rewards/accuracies"].item() == 0.5
    assert m["implicit_accuracy"].item() == 0.5
    assert m["mse/reference"].item() == pytest.approx(0.5 * (0.15 + 0.2), rel=1e-6)


def test_sign_convention_better_winner_lowers_loss():
    ref_w, ref_l = _errs(0.5), _errs(0.5)
    better, _ = diffusion_dpo_loss(_errs(0.49), _errs(0.5), ref_w, ref_l, beta=5000.0)
    worse, _ = diffusion_dpo_loss(_errs(0.51), _errs(0.5), ref_w, ref_l, beta=5000.0)
    assert better.item() < math.log(2.0) < worse.item()


def test_hinge_and_ipo_hand_computed():
    model_w, model_l = _errs(0.0996), _errs(0.1)
    ref_w, ref_l = _errs(0.1), _errs(0.1)
    beta = 5000.0
    h = 2500 * 0.0004  # = 1.0
    hinge, _ = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta, "hinge")
    assert hinge.item() == pytest.approx(max(0.0, 1.0 - h), abs=1e-3)
    ipo, _ = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta, "ipo")
    z = h / beta
    assert ipo.item() == pytest.approx((z - 1 / (2 * beta)) ** 2, rel=1e-3)
    ipo_init, _ = diffusion_dpo_loss(ref_w, ref_l, ref_w, ref_l, beta, "ipo")
    assert ipo_init.item() == pytest.approx(1 / (4 * beta**2), rel=1e-5)


def test_sft_uses_only_the_preferred_error():
    loss, _ = diffusion_dpo_loss(_errs(0.2, 0.4), _errs(9.0, 9.0), None, None, 5000.0, "sft")
    assert loss.item() == pytest.approx(0.3)
    with pytest.raises(ValueError):
        diffusion_dpo_loss(_errs(0.2), _errs(0.1), None, None, 5000.0, "sigmoid")


def test_gradient_pushes_winner_error_down():
    model_w = _errs(0.5).requires_grad_()
    model_l = _errs(0.5).requires_grad_()
    loss, _ = diffusion_dpo_loss(model_w, model_l, _errs(0.5), _errs(0.5), beta=10.0)
    loss.backward()
    assert model_w.grad.item() > 0 > model_l.grad.item()  # descent lowers err_w, raises err_l


def test_per_sample_mse():
    pred = torch.zeros(2, 4, 3, 3)
    target = torch.ones(2, 4, 3, 3)
    target[1] *= 2
    assert per_sample_mse(pred, target).tolist() == [1.0, 4.0]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_noise_schedule_matches_diffusers(prediction_type):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    schedule = NoiseSchedule(scheduler.alphas_cumprod.double(), prediction_type, "cpu")
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(schedule.add_noise(latents, noise, t), scheduler.add_noise(latents, noise, t))
    expected = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    torch.testing.assert_close(schedule.target(latents, noise, t), expected)


def test_ties_are_excluded_and_winner_ordered():
    kept, winner_is_0, ties = select_pairs([1.0, 0.5, 0.0, 0.5], [0.0, 0.5, 1.0, 0.5], "set")
    assert kept.tolist() == [0, 2] and winner_is_0.tolist() == [True, False] and ties == 2
    with pytest.raises(DataError, match="row 1"):
        select_pairs([1.0, 0.7], [0.0, 0.3], "set")


def test_rpo_term_hand_computed_and_per_pair():
    """loss = -log σ(h) + α · β/2 · (err(θ, w) - err(ref, w)), per pair, then the mean."""
    model_w, model_l = _errs(0.099, 0.2), _errs(0.3, 0.0996)
    ref_w, ref_l = _errs(0.100, 0.2), _errs(0.3, 0.1000)
    beta = 5000.0
    h = np.array([2.5, -1.0])
    chosen_gap = np.array([0.099 - 0.100, 0.2 - 0.2])  # err(θ, w) - err(ref, w)
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    for alpha in (0.3, torch.tensor([0.0, 1.0])):
        a = np.array([0.3, 0.3]) if isinstance(alpha, float) else alpha.numpy()
        loss, metrics = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta=beta, rpo_alpha=alpha)
        expected_rpo = a * beta / 2 * chosen_gap
        assert loss.item() == pytest.approx(np.mean(softplus(-h) + expected_rpo), rel=1e-3)
        assert metrics["loss/rpo"].item() == pytest.approx(np.mean(expected_rpo), rel=1e-3, abs=1e-6)


def test_rpo_gradient_is_the_dpo_gradient_plus_a_pull_on_the_winner():
    """d loss / d err(θ, w) gains exactly α · β/2 / B; the loser's gradient is unchanged."""
    beta, alpha = 1000.0, 0.2
    ref_w, ref_l = _errs(0.10, 0.12), _errs(0.11, 0.09)
    grads = {}
    for a in (0.0, alpha):
        model_w, model_l = _errs(0.101, 0.118).requires_grad_(), _errs(0.108, 0.093).requires_grad_()
        loss, _ = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta=beta, rpo_alpha=a)
        loss.backward()
        grads[a] = (model_w.grad.clone(), model_l.grad.clone())
    torch.testing.assert_close(grads[alpha][0] - grads[0.0][0], torch.full((2,), alpha * beta / 2 / 2))
    torch.testing.assert_close(grads[alpha][1], grads[0.0][1])


def test_rpo_rejected_share_hand_computed():
    """rpo = α · β/2 · ((1 - s)(err(θ, w) - err(ref, w)) + s (err(θ, l) - err(ref, l))), per pair; s = 0 is plain RPO."""
    model_w, model_l = _errs(0.099, 0.2), _errs(0.3, 0.0996)
    ref_w, ref_l = _errs(0.100, 0.2), _errs(0.3, 0.1000)
    beta, alpha = 5000.0, 0.4
    chosen_gap = np.array([0.099 - 0.100, 0.0])
    rejected_gap = np.array([0.0, 0.0996 - 0.1000])
    for share in (1 / 3, torch.tensor([0.0, 0.5])):
        s = np.full(2, share) if isinstance(share, float) else share.numpy()
        _, metrics = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta=beta, rpo_alpha=alpha, rpo_rejected_share=share)
        expected = alpha * beta / 2 * ((1 - s) * chosen_gap + s * rejected_gap)
        assert metrics["loss/rpo"].item() == pytest.approx(np.mean(expected), rel=1e-3, abs=1e-7)
    plain, _ = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta=beta, rpo_alpha=alpha)
    zero, _ = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta=beta, rpo_alpha=alpha, rpo_rejected_share=0.0)
    assert zero.item() == plain.item()


def test_rpo_rejected_share_moves_part_of_the_pull_to_the_loser():
    """Against plain RPO, d loss / d err(θ, w) loses s · α · β/2 / B and d loss / d err(θ, l) gains it."""
    beta, alpha, share = 1000.0, 0.3, 1 / 3
    ref_w, ref_l = _errs(0.10, 0.12), _errs(0.11, 0.09)
    grads = {}
    for s in (0.0, share):
        model_w, model_l = _errs(0.101, 0.118).requires_grad_(), _errs(0.108, 0.093).requires_grad_()
        loss, _ = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta=beta, rpo_alpha=alpha, rpo_rejected_share=s)
        loss.backward()
        grads[s] = (model_w.grad.clone(), model_l.grad.clone())
    step = share * alpha * beta / 2 / 2
    torch.testing.assert_close(grads[0.0][0] - grads[share][0], torch.full((2,), step))
    torch.testing.assert_close(grads[share][1] - grads[0.0][1], torch.full((2,), step))
    with pytest.raises(ValueError, match="rpo_alpha"):
        diffusion_dpo_loss(*(_errs(0.1, 0.2),) * 4, beta=10.0, rpo_rejected_share=0.3)


def test_rpo_is_zero_at_the_reference_and_refused_with_sft():
    errs = _errs(0.1, 0.2)
    plain, _ = diffusion_dpo_loss(errs, errs, errs, errs, beta=10.0)
    with_rpo, _ = diffusion_dpo_loss(errs, errs, errs, errs, beta=10.0, rpo_alpha=0.5)
    assert with_rpo.item() == pytest.approx(plain.item())  # θ = ref: both log 2
    with pytest.raises(ValueError, match="sft"):
        diffusion_dpo_loss(errs, errs, None, None, beta=10.0, loss_type="sft", rpo_alpha=0.5)
