"""The L1RR controller study's table: arms by tolerance, the suite's l1rr cells as the default arm."""

from __future__ import annotations

from benchmarks.l1rr_controller import arms, table_text, tolerance


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


def test_arms_group_by_tolerance_with_the_suites_l1rr_cells_as_the_default_arm() -> None:
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
    assert tolerance(pruning[0]) == 0.1 and tolerance(study[0]) == 0.3
    default, looser = arms(pruning, study)
    assert (default["tolerance"], default["seeds"], default["val_top1"]) == (0.1, [0, 1, 2], "82.00 ± 2.83 (n=2)")
    assert default["sparsity"] == ""  # the suite's old records do not say
    assert (looser["tolerance"], looser["val_top1"], looser["top1"]) == (0.3, "87.00 ± 1.41", "83.50 ± 0.71")
    assert looser["delta"] == "-0.50 ± 0.71"
    assert looser["sparsity"] == "0.410 / 0.408 (n=1)"  # one of its two records names it
    text = table_text(pruning, study)
    assert "| ucmerced | 35 % | 0.3 | 0, 1 | 87.00 ± 1.41 | 83.50 ± 0.71 |" in text
    assert table_text(pruning, []).startswith("No records yet")
