"""Budget search: hit a MACs/params target within ±1 %, measured on the pruned model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rscompress.errors import UserError
from rscompress.models import count_macs_params, create_model
from rscompress.pruning import prune_to_budget
from rscompress.pruning.budget import TOLERANCE

IMG = 32


@pytest.fixture(scope="module")
def parent() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", 10)


@pytest.mark.parametrize("global_pruning", [False, True], ids=["uniform", "global"])
@pytest.mark.parametrize("target", [0.3, 0.1, 0.05])
def test_hits_target_macs(parent: nn.Module, target: float, global_pruning: bool) -> None:
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    pruned, report = prune_to_budget(parent, "l1", IMG, target_macs=target, global_pruning=global_pruning)
    macs, params = count_macs_params(pruned, IMG)
    parent_macs, _ = count_macs_params(parent, IMG)
    assert abs(macs / parent_macs / target - 1) <= TOLERANCE
    assert (report.macs, report.params, report.parent_macs) == (macs, params, parent_macs)
    assert report.macs_kept == pytest.approx(macs / parent_macs)
    assert report.target_metric == "macs" and report.target == target
    assert 1 <= report.iterations <= 40
    assert pruned(torch.randn(2, 3, IMG, IMG)).shape == (2, 10)
    # the parent is left as it was
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_hits_target_params(parent: nn.Module) -> None:
    _, report = prune_to_budget(parent, "l2", IMG, target_params=0.2, global_pruning=True)
    assert abs(report.params_kept / 0.2 - 1) <= TOLERANCE
    assert report.target_metric == "params"
    json.dumps(report.to_dict())  # goes into metrics.json as is


def test_ratio_prunes_once(parent: nn.Module) -> None:
    _, report = prune_to_budget(parent, "random", IMG, ratio=0.5)
    assert report.iterations == 1 and report.ratio == 0.5
    assert report.target_metric is None and report.target is None
    assert 0.2 < report.macs_kept < 0.35


def test_taylor_scores_once_from_calibration(parent: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, IMG, IMG, generator=gen), torch.randint(0, 10, (4,), generator=gen))]
    _, report = prune_to_budget(parent, "taylor", IMG, target_macs=0.3, calibration=batches)
    assert abs(report.macs_kept / 0.3 - 1) <= TOLERANCE
    assert all(p.grad is None for p in parent.parameters())  # calibration ran on a copy
    with pytest.raises(UserError, match="gradients"):
        prune_to_budget(parent, "taylor", IMG, target_macs=0.3)


def test_unreachable_target_names_the_closest_fraction(parent: nn.Module) -> None:
    # With widths rounded to 64, the 64-wide layers cannot shrink at all.
    with pytest.raises(UserError, match=r"target_macs=0.05 .*closest achievable fraction .* is 0\.\d+"):
        prune_to_budget(parent, "l1", IMG, target_macs=0.05, round_to=64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_macs": 0},
        {"target_macs": 1.5},
        {"target_params": -0.1},
        {"target_macs": 0.5, "target_params": 0.5},
        {"target_macs": 0.5, "ratio": 0.5},
        {},
        {"ratio": 0.99},
    ],
)
def test_bad_targets_are_user_errors(parent: nn.Module, kwargs: dict) -> None:
    with pytest.raises(UserError):
        prune_to_budget(parent, "l1", IMG, **kwargs)


def test_zero_gammas_tied_across_layers_go_where_they_cost_least_of_the_budget() -> None:
    # Sparse training leaves γ at exactly zero in several layers; a MACs budget that needs
    # only some of them must take the cheap ones (layer 4 at 1×1 px), not the expensive ones
    # of layer 1 (8×8 px) that Torch-Pruning's group order puts first.
    from rscompress.pruning.graph import build_graph, has_ties_across_groups, with_tie_costs
    from rscompress.pruning.pruner import score_model

    torch.manual_seed(0)
    model = create_model("resnet18", 10).eval()
    early, late = model.layer1[0].bn1, model.layer4[1].bn1
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.uniform_(0.5, 1.0)
        early.weight[: early.num_features // 2] = 0  # 32 of 64
        late.weight[: late.num_features // 2] = 0  # 256 of 512
    example = torch.zeros(1, 3, IMG, IMG)
    scores = score_model(build_graph(model, example), "bn", example)
    assert has_ties_across_groups(scores)
    costs = {g.root: g.cost for g in with_tie_costs(model, example, scores)}
    assert costs["layer4.1.conv1"] < costs["layer1.0.conv1"]
    pruned, report = prune_to_budget(model, "bn", IMG, target_macs=0.97, global_pruning=True)
    assert abs(report.macs_kept / 0.97 - 1) <= TOLERANCE
    assert pruned.layer1[0].bn1.num_features == early.num_features  # the expensive zeros stay ...
    assert pruned.layer4[1].bn1.num_features < late.num_features  # ... the cheap ones go
    # A params budget weighs the other way: layer 4's channels hold the most weights.
    costs = {g.root: g.cost for g in with_tie_costs(model, example, scores, "params")}
    assert costs["layer4.1.conv1"] > costs["layer1.0.conv1"]
    pruned, report = prune_to_budget(model, "bn", IMG, target_params=0.985, global_pruning=True)
    assert abs(report.params_kept / 0.985 - 1) <= TOLERANCE
    assert pruned.layer1[0].bn1.num_features == early.num_features // 2  # all 32 cheap zeros, ...
    assert late.num_features // 2 < pruned.layer4[1].bn1.num_features < late.num_features  # ... a few dear ones


def test_nudge_moves_widths_one_step_at_a_time_until_the_share_is_in_the_band() -> None:
    """The search's last resort: from a plan off the band, greedy one-step width changes."""
    from rscompress.pruning.budget import _nudge, _Trials

    # Two groups of 64 channels in steps of 8; group "a" costs 10 per channel, "b" 1.
    cost = {"a": 10, "b": 1}
    parent = 64 * 11
    count = lambda keep: (sum(cost[g] * n for g, n in keep.items()), 0)
    trials = _Trials(lambda keep: keep, count, "macs", parent, 0.5)

    def neighbours(keep: dict[str, int]) -> list[dict[str, int]]:
        return [{**keep, g: n + d} for g, n in keep.items() for d in (-8, 8) if 8 <= n + d <= 64]

    trials.measure(0.5, {"a": 40, "b": 16})  # 416 against a target of 352: 18 % above
    assert not trials.done()
    # a 32 (336, 4.5 % below: the closest move), then b 24 (344), then b 32 (352).
    assert _nudge(trials, neighbours) == 3 and trials.done()
    assert trials.best is not None and trials.best[0].keep == {"a": 32, "b": 32}


def test_one_step_plans_change_one_group_by_one_rounded_step_within_its_floor() -> None:
    from rscompress.pruning.graph import build_graph
    from rscompress.pruning.plan import keep_counts, one_step_plans
    from rscompress.pruning.pruner import score_model

    torch.manual_seed(0)
    model = create_model("resnet18", 10).eval()
    example = torch.zeros(1, 3, IMG, IMG)
    groups = score_model(build_graph(model, example), "l1", example)
    keep = keep_counts(groups, 0.5, round_to=8)
    plans = one_step_plans(groups, keep, round_to=8)
    for plan in plans:
        (changed,) = [g for g in keep if plan[g] != keep[g]]
        assert abs(plan[changed] - keep[changed]) == 8 and plan[changed] % 8 == 0
    # A group at its full width only narrows; one at its floor (10 % of 64, rounded up to 8) only widens.
    full = keep_counts(groups, 0.0, round_to=8)
    assert all(p[g] < full[g] for p in one_step_plans(groups, full, round_to=8) for g in full if p[g] != full[g])
    floor = keep_counts(groups, 0.9, round_to=8)
    stem = next(g.root for g in groups if g.positions == 64)
    assert floor[stem] == 8 and {p[stem] for p in one_step_plans(groups, floor, round_to=8)} == {8, 16}
