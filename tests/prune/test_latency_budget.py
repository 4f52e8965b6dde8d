"""The latency-budget search (pruning/latency_budget.py) on latencies given as functions of
the MACs share, so what it finds can be checked exactly; and a latency budget end to end."""

import math

import pytest
import torch
from torch import nn

from rscompress.config import FitConfig, PruneConfig
from rscompress.errors import UserError
from rscompress.models import create_model
from rscompress.models.complexity import count_macs_params
from rscompress.pruning.latency_budget import (
    AUTO_MULTIPLES,
    MAX_TRIALS,
    MIN_SHARE,
    TOLERANCE,
    Measured,
    search_latency,
)
from rscompress.pruning.methods import check_config
from rscompress.pruning.select import select_and_prune


class _Model(nn.Module):
    def __init__(self, share: float):
        super().__init__()
        self.share = share


def _meter(latency):
    calls = []

    def measure(model):
        calls.append(model.share)
        ratio = latency(model.share)
        return Measured(ratio=ratio, spread=0.0, candidate_ms=ratio, parent_ms=1.0, repeats=1)

    return measure, calls


@pytest.mark.parametrize(
    ("latency", "target"),
    [
        (lambda m: 0.2 + 0.8 * m, 0.5),  # a fixed cost: latency falls slower than the MACs
        (lambda m: m**0.7, 0.3),
        (lambda m: 0.1 + 0.9 * m**1.3, 0.25),
    ],
)
def test_the_search_lands_within_tolerance_of_the_target(latency, target):
    measure, calls = _meter(latency)
    model, report = search_latency(_Model, measure, target, describe_target="test")
    assert abs(latency(model.share) / target - 1) <= TOLERANCE
    assert report.ratio == latency(model.share) and report.macs_share == model.share
    assert report.error <= TOLERANCE and report.to_dict()["within_tolerance"]
    assert len(calls) == len(report.trials) <= MAX_TRIALS
    assert calls[0] == target  # the proportional guess first


def test_a_target_below_the_fixed_cost_is_refused_naming_what_is_left():
    measure, _ = _meter(lambda m: 0.4 + 0.6 * m)
    with pytest.raises(UserError, match=rf"--target-speedup 4 cannot be reached: at {MIN_SHARE:.0%} of the MACs"):
        search_latency(_Model, measure, 0.25, describe_target="--target-speedup 4")


def test_a_target_at_or_above_the_parent_is_refused():
    measure, calls = _meter(lambda m: m)
    with pytest.raises(UserError, match="asks for 120% of the parent's latency"):
        search_latency(_Model, measure, 1.2, describe_target="--target-latency-ms 12")
    assert calls == []


def test_noise_leaves_the_closest_candidate_and_says_it_missed():
    # latency jumps across the target (whole channels): no share lands within tolerance
    measure, calls = _meter(lambda m: 0.3 if m < 0.5 else 0.7)
    _, report = search_latency(_Model, measure, 0.5, describe_target="test")
    assert not report.to_dict()["within_tolerance"]
    assert math.isclose(abs(report.ratio / 0.5 - 1), 0.4)
    assert len(calls) <= MAX_TRIALS


def test_an_unsteady_measurement_is_taken_again_and_the_steadier_kept():
    taken = []

    def measure(model):  # the first measurement of each candidate was hit by load
        taken.append(model.share)
        noisy = taken.count(model.share) == 1
        ratio = 3.0 if noisy else model.share
        return Measured(ratio=ratio, spread=0.3 if noisy else 0.01, candidate_ms=ratio, parent_ms=1.0, repeats=1)

    model, report = search_latency(_Model, measure, 0.4, describe_target="test")
    assert report.ratio == model.share == 0.4 and taken == [0.4, 0.4]


def test_a_method_that_trains_first_or_a_stray_latency_setting_is_refused():
    with pytest.raises(UserError, match=r"--target-speedup prunes candidates .* --method nas trains before it prunes"):
        check_config(PruneConfig(method="nas", target_speedup=2, finetune=FitConfig()))
    with pytest.raises(UserError, match=r"--round-to auto prunes candidates .* --method slim trains before it prunes"):
        check_config(PruneConfig(method="slim", target_macs=0.5, round_to="auto", finetune=FitConfig()))
    with pytest.raises(ValueError, match="--latency-threads is a setting of --target-latency-ms"):
        PruneConfig(method="l1", target_macs=0.5, latency_threads=2, finetune=FitConfig())
    with pytest.raises(ValueError, match=r"give exactly one of --target-macs, .*--target-speedup"):
        PruneConfig(method="l1", target_macs=0.5, target_speedup=2, finetune=FitConfig())


class _WidthMeter:
    """A fake meter under which a plan runs fast only when every conv width is a multiple of
    ``fast``: what --round-to auto must find out by timing."""

    threads, precision = 1, "fp32"

    def __init__(self, fast: int):
        self.fast, self.timed = fast, []

    def parent_ms(self) -> float:
        return 1.0

    def __call__(self, candidate):
        widths = [m.out_channels for m in candidate.modules() if isinstance(m, nn.Conv2d)]
        self.timed.append(widths)
        ratio = 0.3 if all(w % self.fast == 0 for w in widths) else 0.4
        return Measured(ratio=ratio, spread=0.0, candidate_ms=ratio, parent_ms=1.0, repeats=1)


@pytest.mark.parametrize("fast", [8, 16])
def test_round_to_auto_keeps_the_multiple_that_times_fastest_at_the_budget(fast):
    torch.manual_seed(0)
    model = create_model("resnet18", 3, small_input=True).eval()
    cfg = PruneConfig(method="l1", target_macs=0.35, round_to="auto", finetune=FitConfig())
    meter = _WidthMeter(fast)
    pruned, details = select_and_prune(
        model, "resnet18", 32, cfg, train_batches=[], val_batches=[], calibration=[], latency_meter=meter
    )
    auto = details["round_to_auto"]
    assert auto["chosen"] == fast and [row["round_to"] for row in auto["candidates"]] == list(AUTO_MULTIPLES)
    assert all(w % fast == 0 for m in pruned.modules() if isinstance(m, nn.Conv2d) for w in [m.out_channels])
    assert details["budget"]["macs_kept"] == pytest.approx(0.35, rel=0.01)
    assert len(meter.timed) == len(auto["candidates"]) - sum("skipped" in row for row in auto["candidates"])


def test_a_latency_budget_with_round_to_auto_searches_at_the_chosen_multiple():
    torch.manual_seed(0)
    model = create_model("resnet18", 3, small_input=True).eval()
    cfg = PruneConfig(method="l1", target_speedup=3, round_to="auto", finetune=FitConfig())

    class Meter(_WidthMeter):
        def __call__(self, candidate):  # latency in proportion to MACs, multiples of 16 a fifth faster
            widths = [m.out_channels for m in candidate.modules() if isinstance(m, nn.Conv2d)]
            share = count_macs_params(candidate, 32)[0] / count_macs_params(model, 32)[0]
            # ... but not of 32 (the budget search reaches the target at 32 too, with a
            # different MACs share: the choice must not hang on which share is lower).
            fast = all(w % 16 == 0 for w in widths) and not all(w % 32 == 0 for w in widths)
            ratio = share * (0.8 if fast else 1.0)
            return Measured(ratio=ratio, spread=0.0, candidate_ms=ratio, parent_ms=1.0, repeats=1)

    pruned, details = select_and_prune(
        model, "resnet18", 32, cfg, train_batches=[], val_batches=[], calibration=[], latency_meter=Meter(16)
    )
    assert details["round_to_auto"]["chosen"] == 16
    assert details["latency_budget"]["within_tolerance"] and details["latency_budget"]["target_speedup"] == 3
    assert all(m.out_channels % 16 == 0 for m in pruned.modules() if isinstance(m, nn.Conv2d))
