"""AML (rscompress.losses, RemoteTrimmer's fine-tuning loss) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rscompress.losses import aml_ce_loss, aml_distance, aml_loss


def _logits_for(p: list[float]) -> torch.Tensor:
    return torch.tensor(p, dtype=torch.float64).log().float()


def test_aml_hand_computed_single_sample() -> None:
    # K=3, p=[0.7, 0.2, 0.1], target 0: d = (0.3 + 0.2 + 0.1)/3 = 0.2, L = exp(0.2 + 0.04)
    logits = _logits_for([0.7, 0.2, 0.1])[None]
    y = torch.tensor([0])
    assert math.isclose(aml_distance(logits, y).item(), 0.2, rel_tol=1e-6)
    assert math.isclose(aml_loss(logits, y).item(), math.exp(0.24), rel_tol=1e-6)


def test_aml_hand_computed_batch() -> None:
    # sample 1: as above, d=0.2; sample 2: K=3, p=[0.7,0.2,0.1], target 2: d=(0.7+0.2+0.9)/3=0.6
    # L = (exp(0.24) + exp(0.6 + 0.36)) / 2
    logits = torch.stack([_logits_for([0.7, 0.2, 0.1])] * 2)
    y = torch.tensor([0, 2])
    torch.testing.assert_close(aml_distance(logits, y), torch.tensor([0.2, 0.6]))
    expected = (math.exp(0.24) + math.exp(0.96)) / 2
    assert math.isclose(aml_loss(logits, y).item(), expected, rel_tol=1e-6)


def test_aml_uniform_and_confident() -> None:
    # K=4 uniform, target 1: d = 2*(1-0.25)/4 = 0.375; a certain prediction gives d=0, L=1
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 100.0, 0.0, 0.0]])
    y = torch.tensor([1, 1])
    torch.testing.assert_close(aml_distance(logits, y), torch.tensor([0.375, 0.0]))
    d = 0.375
    assert math.isclose(aml_loss(logits, y).item(), (math.exp(d + d * d) + 1.0) / 2, rel_tol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aml_distance_equals_its_definition(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 6, generator=g) * 3
    y = torch.randint(0, 6, (8,), generator=g)
    p = F.softmax(logits, 1)
    d_def = (p - F.one_hot(y, 6).float()).abs().sum(1) / 6
    torch.testing.assert_close(aml_distance(logits, y), d_def, rtol=1e-5, atol=1e-6)


def test_aml_ce_loss_weights_and_gradient() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    ce = F.cross_entropy(logits, y)
    torch.testing.assert_close(aml_ce_loss(logits, y), aml_loss(logits, y) + ce)
    weighted = aml_ce_loss(logits, y, r1=0.5, r2=2.0)
    torch.testing.assert_close(weighted, 0.5 * aml_loss(logits, y) + 2.0 * ce)
    aml_ce_loss(logits, y).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_aml_rejects_bad_target() -> None:
    with pytest.raises(ValueError, match="target"):
        aml_loss(torch.randn(2, 3), torch.tensor([0.0, 1.0]))
