"""The benchmark harness on a tiny suite: records in DESIGN.md format, skip on re-run, tables."""

import json
import os
from pathlib import Path

import pytest
import yaml

from benchmarks.records import read_records
from benchmarks.suite import load_suite, option_args, run_suite
from benchmarks.tables import write_tables
from rscompress.config import DETECTION_LR, FINETUNE_LR
from rscompress.errors import UserError
from tests.fakes import make_fake_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_suite_records_then_skips_and_tabulates(tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=6, size=20)
    suite = {
        "results": str(tmp_path / "results" / "pruning.jsonl"),
        "work": str(tmp_path / "work"),
        "datasets": {"fake": {"path": str(data), "img_size": 16}},
        "train": {"batch_size": 8},
        "finetune": {"epochs": 1, "batch_size": 8},
        "parents": [{"dataset": "fake", "model": "se_resnet18", "epochs": 1, "seeds": [0, 1]}],
        "cells": [
            {"dataset": "fake", "model": "se_resnet18", "method": "remotetrimmer", "loss": "aml+ce", "budgets": [0.3]},
            {
                "dataset": "fake",
                "model": "se_resnet18",
                "method": "l1",
                "global_pruning": True,
                "budgets": [0.3],
                "options": {"round_to": 4},
                "finetune_epochs": 2,
            },
            {
                "dataset": "fake",
                "model": "se_resnet18",
                "method": "l1",
                "budgets": [0.3],
                "budget_metric": "params",
                "label": "l1-memory",
                "finetune_lr": 0.05,
            },
        ],
        "distill": {"epochs": 1, "batch_size": 8},
        "distill_cells": [
            {"dataset": "fake", "model": "se_resnet18", "student": "g_ghost_regnetx_tiny", "loss": "dkd"}
        ],
        "latency_repeats": 3,
        "parent_records": True,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert run_suite(path, seeds=[1], methods=["l1-global", "distill-dkd"]) == 2  # a slice first ...
    assert {(r["seed"], r["method"]) for r in read_records(tmp_path / "results" / "pruning.jsonl")} == {
        (1, "l1-global"),
        (1, "distill-dkd"),
    }
    assert run_suite(path, seeds=[1], budgets=[0.3], models=["se_resnet18"]) == 2  # budgets: pruning cells only
    assert run_suite(path, seeds=[0], students=["g_ghost_regnetx_tiny"]) == 1  # students: distillation only
    assert {
        (r["seed"], r["method"]) for r in read_records(tmp_path / "results" / "pruning.jsonl") if r["seed"] == 0
    } == {(0, "distill-dkd")}
    assert run_suite(path) == 5  # ... and the full run adds only what is missing, the parents' records too
    records = read_records(tmp_path / "results" / "pruning.jsonl")
    parents = [r for r in records if r["method"] == "none"]
    assert sorted(r["seed"] for r in parents) == [0, 1]
    assert all(r["lr"] == 0.1 and r["epochs"] == 1 and "val_top1" in r and "macs_kept" not in r for r in parents)
    assert {r["command"].split(" --seeds ")[1] for r in parents} == {"0 --methods none", "1 --methods none"}
    records = [r for r in records if r not in parents]
    students = [r for r in records if r["method"] == "distill-dkd"]
    assert len(students) == 2 and all(
        r["model"] == "g_ghost_regnetx_tiny"
        and r["params_kept"] < 0.1
        and "teacher_top1" in r
        and "teacher_params" in r
        for r in students
    )
    records = [r for r in records if r not in students]
    for key in (
        "dataset",
        "model",
        "method",
        "target_macs",
        "macs_kept",
        "params_kept",
        "macs",
        "params",
        "parent_top1",
        "top1",
        "kappa",
        "img_size",
        "epochs",
        "finetune_epochs",
        "seed",
        "split",
        "latency_ms_bs1",
        "parent_latency_ms_bs1",
        "device",
        "commit",
        "command",
    ):
        assert all(key in r for r in records), key
    assert all(f"--seed {r['seed']} " in r["command"] for r in records)  # the command redoes the record
    assert {r["method"] for r in records} == {"remotetrimmer-aml+ce", "l1-global", "l1-memory"}
    memory = [r for r in records if r["method"] == "l1-memory"]
    assert (
        all(
            r["target_params"] == 0.3
            and r["target_macs"] is None
            and abs(r["params_kept"] / 0.3 - 1) <= 0.01
            and "--target-params 0.3" in r["command"]
            and r["command"].endswith("l1-memory-params0.3")
            for r in memory
        )
        and len(memory) == 2
    )
    # Its own fine-tuning rate, in its record, its command and the run it made; the others the recipe's.
    assert all(r["finetune_lr"] == 0.05 and "--lr 0.05 " in r["command"] for r in memory)
    assert all(r["finetune_lr"] == FINETUNE_LR for r in records if r not in memory)
    out = Path(memory[0]["command"].split(" --out ")[1])
    assert json.loads((out / "config.json").read_text())["train"]["optim"]["lr"] == 0.05
    assert all(
        "--round-to 4" in r["command"] and "--finetune-epochs 2" in r["command"] and r["finetune_epochs"] == 2
        for r in records
        if r["method"] == "l1-global"
    )
    assert all(r["finetune_epochs"] == 1 for r in records if r["method"] != "l1-global")
    assert run_suite(path) == 0  # finished cells are skipped
    table, plots = write_tables(tmp_path / "results" / "pruning.jsonl")
    assert "± " in table.read_text() and "| params 0.3 |" in table.read_text() and all(p.is_file() for p in plots)
    # A new budget on a changed recipe: the parent of that name was made with the old one.
    suite["train"]["optim"] = {"lr": 0.05}
    suite["cells"][1]["budgets"] = [0.3, 0.5]
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(UserError, match=r"se_resnet18-e1-s0 was made with other settings \(train.optim.lr: 0.1 there"):
        run_suite(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budgets": [0.2]}, r"budget \[0.2\] is not in"),
        ({"methods": ["remotetrimer"]}, r"method \['remotetrimer'\] is not in .*'remotetrimmer-aml\+ce'"),
        ({"models": ["resnet50"]}, r"model \['resnet50'\] is not in"),
        ({"students": ["ghostnet"]}, r"student \['ghostnet'\] is not in"),
        ({"methods": ["none"]}, r"method \['none'\] is not in"),  # its parents have no records of their own
    ],
)
def test_slice_outside_the_suite_names_the_bad_value(kwargs, message):
    with pytest.raises(UserError, match=message):
        run_suite(ROOT / "benchmarks" / "suite.yaml", **kwargs)


def test_shipped_suites_validate_and_share_parents_and_finetuning():
    pruning = load_suite(ROOT / "benchmarks" / "suite.yaml")
    for other in ("distill.yaml", "l1rr_controller.yaml", "slim_rate.yaml", "finetune_loss.yaml"):
        suite = load_suite(ROOT / "benchmarks" / other)
        # Same work dir and recipes: the runs both need are trained once and mean the same thing.
        for field in ("work", "datasets", "train", "finetune", "prune"):
            assert getattr(pruning, field) == getattr(suite, field), (other, field)


def _bf16_flags(config: dict) -> list[bool]:
    """Every ``bf16`` value anywhere in a run dir's config.json."""
    found = []
    for key, value in config.items():
        if key == "bf16":
            found.append(value)
        elif isinstance(value, dict):
            found += _bf16_flags(value)
    return found


def test_a_bf16_parent_trains_fine_tunes_and_teaches_in_bf16_in_its_own_run_dirs(tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=4, size=16)
    suite = {
        "results": str(tmp_path / "results.jsonl"),
        "work": str(tmp_path / "work"),
        "datasets": {"fake": {"path": str(data), "img_size": 16}},
        "train": {"batch_size": 8},
        "finetune": {"epochs": 1, "batch_size": 8},
        "parents": [
            {"dataset": "fake", "model": "resnet18", "epochs": 1, "seeds": [0], "bf16": True, "channels_last": True}
        ],
        "cells": [{"dataset": "fake", "model": "resnet18", "method": "l1", "budgets": [0.5]}],
        "distill": {"epochs": 1, "batch_size": 8},
        "distill_cells": [{"dataset": "fake", "model": "resnet18", "student": "g_ghost_regnetx_tiny", "loss": "kd"}],
        "latency_repeats": 2,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert run_suite(path) == 2
    parent = tmp_path / "work" / "fake-resnet18-e1-s0-bf16"
    for run in (parent, parent / "l1-0.5", parent / "distill-kd-g_ghost_regnetx_tiny"):
        flags = _bf16_flags(json.loads((run / "config.json").read_text()))
        assert flags and all(flags), run
    assert all(r["bf16"] and r["channels_last"] for r in read_records(tmp_path / "results.jsonl"))


def test_option_args_are_the_prune_options_that_set_them():
    from typer.testing import CliRunner

    from rscompress.cli import app

    args = option_args({"round_to": 8, "gate_without_bn": True, "attention_weight": 0.0})
    assert args == ["--round-to", "8", "--gate-without-bn", "--attention-weight", "0.0"]
    assert option_args({"gate_without_bn": False}) == ["--no-gate-without-bn"]
    help_text = CliRunner().invoke(app, ["prune", "--help"], env={"COLUMNS": "200"}).output
    assert all(a in help_text for a in [*args, "--no-gate-without-bn"] if a.startswith("--"))


def test_a_cell_pruned_from_another_fine_tunes_that_cells_pruned_model(tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=6, size=20)
    cells = [
        {
            "dataset": "fake",
            "model": "resnet18",
            "method": "nas",
            "loss": "kd",
            "budgets": [0.5],
            "options": {"search_epochs": 1},
        },
        {
            "dataset": "fake",
            "model": "resnet18",
            "method": "nas",
            "budgets": [0.5],
            "options": {"search_epochs": 1},
            "finetune_epochs": 2,
            "pruned_from": "nas-kd",
        },
    ]
    suite = {
        "results": str(tmp_path / "r.jsonl"),
        "work": str(tmp_path / "work"),
        "datasets": {"fake": {"path": str(data), "img_size": 16}},
        "train": {"batch_size": 8},
        "finetune": {"epochs": 1, "batch_size": 8},
        "parents": [{"dataset": "fake", "model": "resnet18", "epochs": 1, "seeds": [0]}],
        "cells": cells,
        "latency_repeats": 3,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert run_suite(path) == 2
    kd, ce = read_records(tmp_path / "r.jsonl")
    parent = tmp_path / "work" / "fake-resnet18-e1-s0"
    assert (parent / "nas-0.5" / "pruned.safetensors").read_bytes() == (
        parent / "nas-kd-0.5" / "pruned.safetensors"
    ).read_bytes()
    assert f"--pruned-from {parent / 'nas-kd-0.5'}" in ce["command"] and "--pruned-from" not in kd["command"]
    assert (ce["macs"], ce["params"]) == (kd["macs"], kd["params"])
    assert (kd["finetune_epochs"], ce["finetune_epochs"]) == (1, 2)
    # the source has to come first in the suite, with the budgets it lends
    path.write_text(yaml.safe_dump({**suite, "cells": cells[::-1]}))
    with pytest.raises(ValueError, match="pruned_from 'nas-kd' is not an earlier cell of fake resnet18"):
        load_suite(path)
    # ... and the same kind of budget: a 0.5 of the params is another model than 0.5 of the MACs
    path.write_text(yaml.safe_dump({**suite, "cells": [cells[0], {**cells[1], "budget_metric": "params"}]}))
    with pytest.raises(ValueError, match="pruned_from 'nas-kd' is not an earlier cell of fake resnet18"):
        load_suite(path)


def test_a_sparse_cell_prunes_its_next_budget_from_the_sparse_training_it_would_repeat(tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=6, size=20)
    suite = {
        "results": str(tmp_path / "r.jsonl"),
        "work": str(tmp_path / "work"),
        "datasets": {"fake": {"path": str(data), "img_size": 16}},
        "train": {"batch_size": 8},
        "finetune": {"epochs": 1, "batch_size": 8},
        "parents": [{"dataset": "fake", "model": "resnet18", "epochs": 1, "seeds": [0]}],
        "cells": [
            {
                "dataset": "fake",
                "model": "resnet18",
                "method": "slim",
                "budgets": [0.5, 0.35],
                "options": {"sparse_epochs": 1},
            },
            {
                "dataset": "fake",
                "model": "resnet18",
                "method": "slim",
                "label": "slim-2",
                "budgets": [0.5],
                "options": {"sparse_epochs": 2},
            },
        ],
        "latency_repeats": 3,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert run_suite(path) == 3
    half, third, other = read_records(tmp_path / "r.jsonl")
    parent = tmp_path / "work" / "fake-resnet18-e1-s0"
    assert f"--sparse-from {os.path.relpath(parent / 'slim-0.5')} " in third["command"]
    assert "--sparse-from" not in half["command"]
    assert "--sparse-from" not in other["command"]  # another cell, other settings: trained anew
    assert (parent / "slim-0.35" / "sparse.safetensors").read_bytes() == (
        parent / "slim-0.5" / "sparse.safetensors"
    ).read_bytes()
    assert abs(third["macs_kept"] / 0.35 - 1) <= 0.01
    # the phase's reach next to its target (the one it ran towards: 0.35 reused 0.5's)
    assert half["target_sparsity"] == third["target_sparsity"] == pytest.approx(1 - 0.5**0.5)
    assert 0 <= half["sparsity"] == third["sparsity"] <= 1


def test_a_detection_suite_records_map_and_its_parents(tmp_path):
    from tests.detection_fakes import make_detection_dataset

    root, _ = make_detection_dataset(tmp_path, "coco", size=64)
    suite = {
        "results": str(tmp_path / "results" / "detection.jsonl"),
        "work": str(tmp_path / "work"),
        "datasets": {"tanks": {"path": str(root), "img_size": 64}},
        "train": {"batch_size": 2},
        "finetune": {"epochs": 1, "batch_size": 2},
        "parents": [{"dataset": "tanks", "model": "fcos_mobilenet_v3", "epochs": 1, "seeds": [0]}],
        "cells": [{"dataset": "tanks", "model": "fcos_mobilenet_v3", "method": "l1", "budgets": [0.35]}],
        "latency_repeats": 3,
        "parent_records": True,
    }
    path = tmp_path / "detection.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert run_suite(path) == 2
    parent, record = read_records(tmp_path / "results" / "detection.jsonl")
    assert (parent["method"], parent["task"], parent["lr"]) == ("none", "detection", DETECTION_LR)
    assert {"map50", "map", "map_small", "val_map50"} <= set(parent) and "top1" not in parent
    assert record["task"] == "detection" and record["macs_kept"] == pytest.approx(0.35, rel=0.01)
    assert {
        "map50",
        "map",
        "map_small",
        "parent_map50",
        "parent_map",
        "latency_ms_bs1",
        "parent_latency_ms_bs1",
    } <= set(record)
    assert "top1" not in record
    assert record["onnx_parity"] and record["box_parity"]["n_images"] == 1  # exported, checked on its test split
    # Its tables and plots rank mAP@0.5, against the parent's.
    table, plots = write_tables(tmp_path / "results" / "detection.jsonl")
    assert "| mAP@0.5 (%) | parent / teacher mAP@0.5 (%) |" in table.read_text()
    assert f"| {100 * record['parent_map50']:.2f} |" in table.read_text()
    assert [p.name for p in plots] == ["detection_tanks_map50_vs_macs.png", "detection_tanks_map50_vs_latency.png"]


def test_the_shipped_detection_suite_validates():
    suite = load_suite(ROOT / "benchmarks" / "detection.yaml")
    assert {p.model for p in suite.parents} <= {"fcos_mobilenet_v3", "fcos_resnet18"}
    assert {c.method for c in suite.cells} == {"l1rr", "slim", "nas", "l1", "bn", "random"}
    # The rate study's parents: the same recipe but the rate, in a work dir of their own.
    study = load_suite(ROOT / "benchmarks" / "detection_parent_lr.yaml")
    (arm,) = study.parents
    (nepu,) = [p for p in suite.parents if p.dataset == "nepu_owod"]
    assert (study.train, study.datasets["nepu_owod"]) == (suite.train, suite.datasets["nepu_owod"])
    assert arm.model_copy(update={"lr": None, "seeds": nepu.seeds}) == nepu and arm.lr == 0.01 != suite.train.optim.lr
    assert study.work != suite.work and not study.cells and study.parent_records and suite.parent_records
    # The clipping study's arm is now the suite's own recipe (its runs became the suite's parents).
    clipped = load_suite(ROOT / "benchmarks" / "detection_parent_clip.yaml")
    assert clipped.train == suite.train and suite.train.clip_grad_norm == 10 and clipped.work != suite.work
    # The fine-tuning rate study: the suite's parents, recipes and work dir; only the rate differs.
    rate = load_suite(ROOT / "benchmarks" / "detection_finetune_lr.yaml")
    for field in ("work", "train", "finetune", "prune"):
        assert getattr(rate, field) == getattr(suite, field), field
    assert rate.datasets.items() <= suite.datasets.items()
    assert all(p.model_copy(update={"seeds": nepu.seeds}) == nepu for p in rate.parents)
    assert {(c.method, c.budgets[0]) for c in rate.cells} == {("l1", 0.35)}
    assert sorted(c.lr(rate) for c in rate.cells) == [0.006, 0.04] and rate.finetune.optim.lr == 0.02
    # L1RR with the layer scale held: the suite's parents, recipes, work dir and l1rr options.
    hold = load_suite(ROOT / "benchmarks" / "detection_l1rr_hold_scale.yaml")
    for field in ("work", "train", "finetune", "datasets", "parents", "latency_repeats"):
        assert getattr(hold, field) == getattr(suite, field), field
    l1rr = {c.dataset: {**suite.prune, **c.options} for c in suite.cells if c.method == "l1rr"}
    held = {c.dataset: {**hold.prune, **c.options} for c in hold.cells}
    assert held == {d: {**o, "sparse_hold_scale": True} for d, o in l1rr.items()}
    # ... and its starting rate, held: the hold-scale study's cells at another rate.
    rate_study = load_suite(ROOT / "benchmarks" / "detection_l1rr_hold_scale_rate.yaml")
    for field in ("work", "train", "finetune", "datasets", "parents", "latency_repeats"):
        assert getattr(rate_study, field) == getattr(suite, field), field
    faster = {c.dataset: {**rate_study.prune, **c.options} for c in rate_study.cells}
    assert faster == {d: {**o, "sparse_rate": 0.1} for d, o in held.items()}


def test_a_cell_cannot_take_the_label_of_a_parents_record(tmp_path):
    spec = yaml.safe_load((ROOT / "benchmarks" / "detection.yaml").read_text())
    spec["cells"][0]["label"] = "none"
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="a cell's label cannot be 'none': that is a parent's own record"):
        load_suite(path)


def test_a_detector_record_says_how_many_plain_batches_its_batchnorm_statistics_came_from():
    from benchmarks.suite import _precise_bn
    from rscompress.config import DETECTION_PRECISE_BN_BATCHES

    detection = {"task": "detection"}
    assert _precise_bn({}, detection) == {"precise_bn_batches": 0}  # a run made before the option
    assert _precise_bn({"precise_bn_batches": None}, detection) == {"precise_bn_batches": DETECTION_PRECISE_BN_BATCHES}
    assert _precise_bn({"precise_bn_batches": 4}, detection) == {"precise_bn_batches": 4}
    assert _precise_bn({"precise_bn_batches": None}, {"top1": 0.8}) == {}  # classifiers: no field
