"""The channel-selection rules, on hand-made group scores (no model needed)."""

from __future__ import annotations

import pytest
import torch

from rscompress.errors import UserError
from rscompress.pruning.graph import GroupScore
from rscompress.pruning.plan import keep_counts, plan_pruning, removal_plan


def group(root: str, scores: list[float], ch_groups: int = 1) -> GroupScore:
    return GroupScore(root, ch_groups, torch.tensor(scores))


def test_uniform_keeps_the_ratio_of_every_group_and_drops_lowest_scores() -> None:
    a = group("a", [5, 1, 4, 2, 3, 6, 8, 7])  # scores 1, 2, 3, 4 sit at channels 1, 3, 4, 2
    b = group("b", [1.0, 0.1, 0.2, 0.3])
    assert keep_counts([a, b], 0.5) == {"a": 4, "b": 2}
    assert plan_pruning([a, b], 0.5) == {"a": [1, 2, 3, 4], "b": [1, 2]}


def test_global_ranks_across_groups_but_respects_the_floor() -> None:
    strong = group("strong", [10.0] * 10)
    weak = group("weak", [0.1 * i for i in range(1, 11)])
    # Half of all 20 channels go; all 10 weak ones are the lowest, but each group keeps
    # >= ceil(10 · (1 − 0.9)) = 1 channel, so the last one comes from `strong`.
    keep = keep_counts([strong, weak], 0.5, global_pruning=True, max_pruning_ratio=0.9)
    assert keep == {"strong": 9, "weak": 1}
    assert plan_pruning([strong, weak], 0.5, global_pruning=True)["weak"] == list(range(9))


def test_uniform_floor_caps_every_group() -> None:
    a = group("a", list(range(64)))
    assert keep_counts([a], 0.9, max_pruning_ratio=0.9) == {"a": 7}  # ⌈6.4⌉, never fewer
    assert keep_counts([group("tiny", [1.0, 2.0])], 0.9) == {"tiny": 1}  # at least one


def test_round_to_gives_multiples_and_rounds_the_floor_up() -> None:
    groups = [group(f"g{n}", list(range(n))) for n in (64, 128, 40)]
    keep = keep_counts(groups, 0.6, round_to=8)
    assert all(k % 8 == 0 for k in keep.values()), keep
    assert keep == {"g64": 24, "g128": 48, "g40": 16}
    # floor ⌈6.4⌉ = 7 is rounded up to 8 rather than down to 0
    assert keep_counts(groups, 0.9, round_to=8)["g64"] == 8


def test_a_segment_seen_through_a_split_keeps_its_own_floor() -> None:
    # channels 0-3 reach some layer alone (a split); they are also the four lowest-scored
    g = GroupScore("g", 1, torch.tensor([0.0, 1, 2, 3, 10, 11, 12, 13]), segments=((0, 1, 2, 3),))
    assert plan_pruning([g], 0.5) == {"g": [0, 1, 2, 4]}  # channel 3 stays for that layer


def test_channel_groups_prune_the_same_positions_in_every_part() -> None:
    g = group("grouped", [3.0, 1.0, 2.0, 4.0], ch_groups=2)  # 8 channels, 2 parts of 4
    assert plan_pruning([g], 0.5) == {"grouped": [1, 2, 5, 6]}
    # round_to 4 over 2 parts: positions step by 2, so channels stay multiples of 4
    assert keep_counts([g], 0.3, round_to=4) == {"grouped": 2}


def test_fixed_groups_keep_their_count_while_the_others_move() -> None:
    a, b = group("a", list(range(10))), group("b", list(range(10)))
    assert keep_counts([a, b], 0.7, fixed={"a": 6}) == {"a": 6, "b": 3}
    # global: pinned losses count toward the ratio; the rest comes from free groups
    assert keep_counts([a, b], 0.5, global_pruning=True, fixed={"a": 8}) == {"a": 8, "b": 2}


def test_removal_plan_omits_untouched_groups() -> None:
    a = group("a", [1.0, 2.0])
    assert removal_plan([a], {"a": 2}) == {}


@pytest.mark.parametrize("ratio", [-0.1, 0.95, 1.0, 1.5])
def test_bad_ratio_is_a_user_error(ratio: float) -> None:
    with pytest.raises(UserError, match=str(ratio)):
        keep_counts([group("a", [1.0, 2.0])], ratio)


@pytest.mark.parametrize("round_to", [0, -8, 2.5, True])
def test_bad_round_to_is_a_user_error(round_to: object) -> None:
    with pytest.raises(UserError, match="round_to"):
        keep_counts([group("a", [1.0, 2.0])], 0.5, round_to=round_to)  # type: ignore[arg-type]


def test_global_removes_equal_scores_cheapest_first() -> None:
    # Both groups are all zeros (what sparse training leaves); "late" costs less per channel.
    early = GroupScore("early", 1, torch.zeros(10), cost=100.0)
    late = GroupScore("late", 1, torch.zeros(10), cost=1.0)
    assert keep_counts([early, late], 0.4, global_pruning=True) == {"early": 10, "late": 2}
    # A lower score still goes before a cheaper equal one: cost only breaks ties.
    early = GroupScore("early", 1, torch.tensor([-1.0] + [0.0] * 9), cost=100.0)
    assert keep_counts([early, late], 0.4, global_pruning=True) == {"early": 9, "late": 3}
    # Without costs (0, not measured) ties go in network order, as before.
    plain = [GroupScore("early", 1, torch.zeros(10)), GroupScore("late", 1, torch.zeros(10))]
    assert keep_counts(plain, 0.4, global_pruning=True) == {"early": 2, "late": 10}
