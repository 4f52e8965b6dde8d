"""The option study's table: arms by the setting's value, the suite's cells as the default arm."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.option_study import (
    DEFAULTS,
    FINETUNE_LR,
    LOSS,
    arm_value,
    arms,
    default_value,
    settings,
    shown,
    studied,
    table_text,
)
from benchmarks.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = DEFAULTS[("l1rr", "sparse_loss_tolerance")]  # what a suite l1rr cell runs at


def _record(method: str, seed: int, val: float, top1: float, **extra) -> dict:
    return {
        "dataset": "ucmerced",
        "model": "se_resnet18",
        "method": method,
        "target_macs": 0.35,
        "seed": seed,
        "val_top1": val,
        "top1": top1,
        "parent_top1": 0.84,
        "params_kept": 0.25,
        **extra,
    }


def test_arms_group_by_value_with_the_suites_cells_as_the_default_arm() -> None:
    loose = {"options": {"round_to": 8, "sparse_loss_tolerance": 0.3}}
    pruning = [
        _record("l1rr", 0, 0.80, 0.82),
        _record("l1rr", 1, 0.84, 0.80),
        {k: v for k, v in _record("l1rr", 2, 0.0, 0.81).items() if k != "val_top1"},  # from before val_top1
        _record("l1", 0, 0.99, 0.99),  # another method: not an arm
        {**_record("l1rr", 0, 0.99, 0.99), "target_macs": 0.1},  # a budget the study did not run
    ]
    study = [
        _record("l1rr-tolerance0.3", 0, 0.86, 0.83, sparsity=0.41, target_sparsity=0.408, **loose),
        _record("l1rr-tolerance0.3", 1, 0.88, 0.84, **loose),
    ]
    method, option = "l1rr", "sparse_loss_tolerance"
    assert arm_value(pruning[0], option, TOLERANCE) == TOLERANCE and arm_value(study[0], option, TOLERANCE) == 0.3
    default, other = sorted(arms(pruning, study, method, option, TOLERANCE), key=lambda arm: arm["value"] != TOLERANCE)
    assert (default["value"], default["seeds"], default["val"]) == (TOLERANCE, [0, 1, 2], "82.00 ± 2.83 (n=2)")
    assert default["default"] and not other["default"]
    assert default["sparsity"] == ""  # the suite's old records do not say
    assert (other["value"], other["val"], other["score"]) == (0.3, "87.00 ± 1.41", "83.50 ± 0.71")
    assert other["delta"] == "-0.50 ± 0.71"
    assert other["sparsity"] == "0.410 / 0.408 (n=1)"  # one of its two records names it
    text = table_text(pruning, study, method, option, TOLERANCE)
    assert "| val top-1 (%) | test top-1 (%) |" in text
    assert "| ucmerced | 35 % | 0.3 | 0, 1 | 87.00 ± 1.41 | 83.50 ± 0.71 |" in text
    assert f"| ucmerced | 35 % | {TOLERANCE:g} (default) | 0, 1, 2 |" in text
    assert table_text(pruning, [], method, option, TOLERANCE).startswith("No records yet")


def test_a_run_in_both_the_suite_and_the_study_counts_once() -> None:
    """An arm at the value that is the default is the suite's cell run again: one run a seed."""
    option = "sparse_loss_tolerance"
    pruning = [_record("l1rr", 0, 0.80, 0.82)]
    study = [_record(f"l1rr-tolerance{TOLERANCE:g}", 0, 0.80, 0.82, options={option: TOLERANCE})]
    (arm,) = arms(pruning, study, "l1rr", option, TOLERANCE)
    assert arm["seeds"] == [0] and arm["default"]


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        (
            [{"method": "slim", "options": {"sparse_rate": 0.1}}, {"method": "l1rr", "options": {"sparse_rate": 0.1}}],
            r"one option of one method; these cells vary \['sparse_rate'\] of \['l1rr', 'slim'\]",
        ),
        ([{"method": "slim", "options": {"round_to": 8}}], r"vary \[\] of \['slim'\]"),
        ([{"method": "nas", "options": {"search_epochs": 5}}], "no default known for search_epochs of nas"),
    ],
)
def test_a_study_file_that_is_not_one_option_of_one_method_is_refused(cells, message) -> None:
    with pytest.raises(ValueError, match=message):
        studied(cells, {"round_to": 8})


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        ("l1rr_controller.yaml", ("l1rr", "sparse_loss_tolerance")),
        ("slim_rate.yaml", ("slim", "sparse_rate")),
        ("detection_finetune_lr.yaml", ("l1", FINETUNE_LR)),
        ("detection_l1rr_hold_scale.yaml", ("l1rr", "sparse_hold_scale")),
        ("detection_l1rr_hold_scale_rate.yaml", ("l1rr", "sparse_rate")),
        ("finetune_loss.yaml", ("l1", LOSS)),
    ],
)
def test_the_shipped_study_files_name_their_method_and_option(study, expected) -> None:
    suite = load_suite(ROOT / "benchmarks" / study)
    assert studied(settings(suite.cells), suite.prune) == expected


def test_a_fine_tuning_rate_study_ranks_detectors_by_val_map50_against_the_suites_rate() -> None:
    def detection(method: str, seed: int, val: float, map50: float, lr: float | None) -> dict:
        record = {
            "dataset": "nepu_owod",
            "model": "fcos_mobilenet_v3",
            "method": method,
            "target_macs": 0.35,
            "seed": seed,
            "task": "detection",
            "val_map50": val,
            "map50": map50,
            "parent_map50": 0.7,
            "params_kept": 0.3,
        }
        return record if lr is None else {**record, FINETUNE_LR: lr}

    cells = [{"method": "l1", "options": {}, FINETUNE_LR: 0.02}]
    assert studied(cells, {"round_to": 16}) == ("l1", FINETUNE_LR)
    assert default_value("l1", FINETUNE_LR, 0.002) == 0.002
    # The suite's own l1 cells: two that name their rate, one from before records did (it may
    # have run at another rate than the suite's today: left out).
    suite = [
        detection("l1", 0, 0.60, 0.55, 0.002),
        detection("l1", 1, 0.62, 0.57, 0.002),
        detection("l1", 2, 0.99, 0.99, None),
    ]
    study = [detection("l1-ft0.02", 0, 0.70, 0.66, 0.02)]
    text = table_text(suite, study, "l1", FINETUNE_LR, 0.002)
    assert "| finetune_lr | seeds | val mAP@0.5 (%) | test mAP@0.5 (%) |" in text
    assert "| nepu_owod | 35 % | 0.002 (default) | 0, 1 | 61.00 ± 1.41 | 56.00 ± 1.41 | -14.00 ± 1.41 |" in text
    assert "| nepu_owod | 35 % | 0.02 | 0 | 70.00 | 66.00 | -4.00 |" in text


def test_a_fine_tuning_loss_study_puts_the_suites_cross_entropy_cells_beside_each_teacher_loss() -> None:
    cells = [{"method": "l1", "options": {}, LOSS: "kd"}, {"method": "l1", "options": {}, LOSS: "dkd"}]
    assert studied(cells, {"round_to": 8}) == ("l1", LOSS)
    assert default_value("l1", LOSS, 0.02) == "ce"  # a suite cell's loss
    suite = [
        _record("l1", 0, 0.80, 0.81, loss="ce"),
        _record("l1", 1, 0.82, 0.83, loss="ce"),
        _record("l1-kd", 0, 0.99, 0.99, loss="kd"),  # not the suite's: only the study's records are arms
    ]
    study = [_record("l1-kd", 0, 0.84, 0.85, loss="kd"), _record("l1-dkd", 0, 0.86, 0.80, loss="dkd")]
    assert [(arm["value"], arm["seeds"]) for arm in arms(suite, study, "l1", LOSS, "ce")] == [
        ("ce", [0, 1]),
        ("dkd", [0]),
        ("kd", [0]),
    ]
    text = table_text(suite, study, "l1", LOSS, "ce")
    assert "| ucmerced | 35 % | ce (default) | 0, 1 | 81.00 ± 1.41 | 82.00 ± 1.41 |" in text
    assert "| ucmerced | 35 % | kd | 0 | 84.00 | 85.00 | +1.00 |" in text


def test_an_arm_is_shown_as_its_number_its_name_or_a_switch_on_or_off() -> None:
    assert [shown(v) for v in (0.1, 0.02, "aml+ce", True, False)] == ["0.1", "0.02", "aml+ce", "on", "off"]
