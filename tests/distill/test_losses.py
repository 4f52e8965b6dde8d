"""Distillation losses (rscompress.distillation.losses): identities, zeros, gradients, warm-up."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rscompress.distillation.losses import (
    DKDTerms,
    ce_loss,
    dkd_loss,
    dkd_per_sample,
    kd_loss,
    kd_per_sample,
    warmup_factor,
)

CASES = [(seed, k, temp, scale) for seed, k in enumerate((2, 3, 10, 45)) for temp in (1.0, 4.0) for scale in (1.0, 8.0)]
Logits = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _logits(seed: int, k: int, scale: float, n: int = 6) -> Logits:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, k, (n,), generator=g)
    return s, t, y


@pytest.mark.parametrize(("seed", "k", "temp", "scale"), CASES)
def test_kd_equals_tckd_plus_weighted_nckd_per_sample(seed: int, k: int, temp: float, scale: float) -> None:
    # Tested form, per sample, at temperature T, before the T² factor and the batch mean:
    #   KL(p_T || p_S) == TCKD + (1 - p_t^T) * NCKD,  p = softmax(z / T), t = target class.
    s, t, y = _logits(seed, k, scale)
    kd = kd_per_sample(s, t, temp)
    tckd, nckd = dkd_per_sample(s, t, y, temp)
    p_target_teacher = F.softmax(t.float() / temp, dim=1).gather(1, y[:, None]).squeeze(1)
    assert kd.shape == tckd.shape == nckd.shape == (s.shape[0],)
    torch.testing.assert_close(kd, tckd + (1 - p_target_teacher) * nckd, rtol=1e-4, atol=1e-5)
    assert (tckd >= -1e-6).all() and (nckd >= -1e-6).all()


@pytest.mark.parametrize(("seed", "k", "temp", "scale"), CASES[:4])
def test_batch_losses_are_t2_times_mean_of_per_sample(seed: int, k: int, temp: float, scale: float) -> None:
    s, t, y = _logits(seed, k, scale)
    torch.testing.assert_close(kd_loss(s, t, temp), kd_per_sample(s, t, temp).mean() * temp**2)
    # KD loss = F.kl_div(batchmean) * T^2, the textbook form
    log_ps, pt = F.log_softmax(s.float() / temp, 1), F.softmax(t.float() / temp, 1)
    ref = F.kl_div(log_ps, pt, reduction="batchmean")
    torch.testing.assert_close(kd_loss(s, t, temp), ref * temp**2, rtol=1e-5, atol=1e-6)
    terms = dkd_loss(s, t, y, alpha=0.5, beta=3.0, temperature=temp)
    assert isinstance(terms, DKDTerms)
    tckd, nckd = dkd_per_sample(s, t, y, temp)
    torch.testing.assert_close(terms.tckd, tckd.mean())
    torch.testing.assert_close(terms.nckd, nckd.mean())
    torch.testing.assert_close(terms.total, temp**2 * (0.5 * tckd.mean() + 3.0 * nckd.mean()))


def test_dkd_matches_mdistiller_masking_form() -> None:
    # NCKD with mdistiller's "logits - 1000 * gt_mask" trick, TCKD from the binary probs
    s, t, y = _logits(7, 5, 2.0)
    temp = 4.0
    gt = F.one_hot(y, 5).bool()
    ps, pt = F.softmax(s.float() / temp, 1), F.softmax(t.float() / temp, 1)
    bs = torch.stack(((ps * gt).sum(1), (ps * ~gt).sum(1)), 1)
    bt = torch.stack(((pt * gt).sum(1), (pt * ~gt).sum(1)), 1)
    tckd_ref = (bt * (bt.log() - bs.log())).sum(1)
    ls = F.log_softmax(s.float() / temp - 1000.0 * gt, 1)
    lt = F.log_softmax(t.float() / temp - 1000.0 * gt, 1)
    nckd_ref = F.kl_div(ls, lt, reduction="none", log_target=True).sum(1)
    tckd, nckd = dkd_per_sample(s, t, y, temp)
    torch.testing.assert_close(tckd, tckd_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(nckd, nckd_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_zero_for_identical_logits(temp: float) -> None:
    s, _, y = _logits(3, 10, 5.0)
    assert kd_loss(s, s.clone(), temp).abs().item() < 1e-6
    terms = dkd_loss(s, s.clone(), y, temperature=temp)
    for v in terms:
        assert v.abs().item() < 1e-6


def test_gradients_reach_only_the_student() -> None:
    s, t, y = _logits(5, 7, 3.0)
    s = s.float().requires_grad_(True)
    t = t.float().requires_grad_(True)
    (kd_loss(s, t, 4.0) + dkd_loss(s, t, y).total + ce_loss(s, y)).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_numerically_stable_for_extreme_logits() -> None:
    # very confident teacher and student: p_target == 1 in float32, logits ~ 1e4
    s = torch.tensor([[1e4, 0.0, -1e4], [0.0, 5e3, 1.0]], requires_grad=True)
    t = torch.tensor([[2e4, -3e3, 0.0], [0.0, 1e4, -1e4]])
    y = torch.tensor([0, 1])
    for temp in (1.0, 4.0):
        terms = dkd_loss(s, t, y, temperature=temp)
        loss = terms.total + kd_loss(s, t, temp)
        assert all(torch.isfinite(v) for v in terms) and torch.isfinite(loss)
        loss.backward()
        assert torch.isfinite(s.grad).all()
        s.grad = None


def test_half_precision_inputs_are_computed_in_float32() -> None:
    s, t, y = _logits(11, 6, 2.0)
    full = dkd_loss(s.float(), t.float(), y).total
    half = dkd_loss(s.half(), t.half(), y).total
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=1e-2, atol=1e-3)


def test_ce_loss_with_label_smoothing() -> None:
    s, _, y = _logits(2, 4, 1.0)
    torch.testing.assert_close(ce_loss(s, y), F.cross_entropy(s.float(), y))
    torch.testing.assert_close(ce_loss(s, y, label_smoothing=0.1), F.cross_entropy(s.float(), y, label_smoothing=0.1))


def test_bad_inputs_raise() -> None:
    s, t, y = _logits(0, 4, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, 0.0)
    with pytest.raises(ValueError, match="shape"):
        kd_loss(s, t[:, :3], 4.0)
    with pytest.raises(ValueError, match="target"):
        dkd_loss(s, t, y.float())


@pytest.mark.parametrize(
    ("epoch", "warmup", "expected"),
    [
        (0, 20, 0.05),
        (9, 20, 0.5),
        (19, 20, 1.0),
        (50, 20, 1.0),
        (0, 1, 1.0),
        (0, 0, 1.0),
        (3, -1, 1.0),
        (1, 3, 2 / 3),
    ],
)
def test_warmup_factor(epoch: int, warmup: int, expected: float) -> None:
    assert math.isclose(warmup_factor(epoch, warmup), expected)


def test_warmup_factor_rejects_negative_epoch() -> None:
    with pytest.raises(ValueError):
        warmup_factor(-1, 20)
