import math

import pytest
import torch
from pydantic import ValidationError

from rscompress.config import OptimConfig
from rscompress.engine.schedule import apply_schedule, build_optimizer, lr_factor


def test_cosine_goes_from_one_to_zero():
    cfg = OptimConfig(schedule="cosine")
    assert lr_factor(0, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(5, 10, cfg) == pytest.approx(0.5)
    assert lr_factor(10, 10, cfg) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_multiplies_at_milestones():
    cfg = OptimConfig(schedule="step", milestones=(80, 120), gamma=0.1)
    assert lr_factor(79.9, 160, cfg) == 1.0
    assert lr_factor(80, 160, cfg) == pytest.approx(0.1)
    assert lr_factor(150, 160, cfg) == pytest.approx(0.01)


def test_warmup_rises_linearly_then_hands_over():
    cfg = OptimConfig(schedule="constant", warmup_epochs=2)
    assert lr_factor(0, 10, cfg) < 0.01
    assert lr_factor(1, 10, cfg) == pytest.approx(0.5, abs=1e-3)
    assert lr_factor(2, 10, cfg) == 1.0
    cos = OptimConfig(schedule="cosine", warmup_epochs=2)
    assert lr_factor(2, 10, cos) == pytest.approx(1.0)
    assert lr_factor(6, 10, cos) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def _torch_onecycle(total_steps: int, pct_start: float, optimizer_cls=torch.optim.SGD, **kw):
    """(lr, momentum) torch's OneCycleLR gives at every step, peak lr 1."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = optimizer_cls([param], lr=1.0, **kw)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=total_steps, pct_start=pct_start)
    seen = []
    for _ in range(total_steps):
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["betas"][0] if "betas" in group else group["momentum"]))
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_onecycle_follows_torch_onecyclelr(optimizer):
    """Our pure-function OneCycle and torch's stateful OneCycleLR agree step by step (torch puts
    its phase ends one step earlier, hence the tolerance), momentum or β1 included."""
    epochs, steps = 10, 60
    cfg = OptimConfig(optimizer=optimizer, lr=1.0, schedule="onecycle", pct_start=0.15)
    model = torch.nn.Linear(1, 1)
    ours = build_optimizer(model.parameters(), cfg)
    torch_cls, kw = (
        (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}) if optimizer == "sgd" else (torch.optim.AdamW, {})
    )
    expected = _torch_onecycle(epochs * steps, 0.15, torch_cls, **kw)
    for i, (lr, momentum) in enumerate(expected):
        got = apply_schedule(ours, i / steps, epochs, cfg)
        group = ours.param_groups[0]
        got_momentum = group["betas"][0] if optimizer == "adamw" else group["momentum"]
        assert got == pytest.approx(lr, abs=0.02) and got_momentum == pytest.approx(momentum, abs=0.002), i
    assert expected[0][0] == pytest.approx(1 / 25) and lr_factor(0, epochs, cfg) == pytest.approx(1 / 25)
    assert lr_factor(1.5, epochs, cfg) == pytest.approx(1.0)  # the peak, at pct_start
    assert lr_factor(epochs, epochs, cfg) == pytest.approx(1 / 25 / 1e4)


def test_momentum_stays_put_without_cycling():
    cfg = OptimConfig(schedule="onecycle", cycle_momentum=False, momentum=0.8)
    optimizer = build_optimizer(torch.nn.Linear(1, 1).parameters(), cfg)
    apply_schedule(optimizer, 0.5, 10, cfg)
    assert optimizer.param_groups[0]["momentum"] == 0.8 and optimizer.param_groups[0]["nesterov"]
    cosine = OptimConfig(schedule="cosine", nesterov=False)
    optimizer = build_optimizer(torch.nn.Linear(1, 1).parameters(), cosine)
    apply_schedule(optimizer, 5, 10, cosine)
    assert optimizer.param_groups[0]["momentum"] == 0.9 and not optimizer.param_groups[0]["nesterov"]


def test_contradictory_schedule_options_are_refused():
    with pytest.raises(ValidationError, match="pct-start"):
        OptimConfig(schedule="onecycle", warmup_epochs=2)
    with pytest.raises(ValidationError, match="no-nesterov"):
        OptimConfig(schedule="cosine", momentum=0.0)
    assert not OptimConfig(schedule="cosine", momentum=0.0, nesterov=False).nesterov
    # Cycled, the configured momentum is never used: the optimiser starts at the cycle's 0.95.
    cycled = OptimConfig(momentum=0.0)
    assert build_optimizer(torch.nn.Linear(1, 1).parameters(), cycled).param_groups[0]["momentum"] == 0.95
