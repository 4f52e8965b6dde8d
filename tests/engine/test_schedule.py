import math

import pytest

from rscompress.config import OptimConfig
from rscompress.engine.schedule import lr_factor


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
