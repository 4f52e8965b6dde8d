"""``rscompress run RECIPE.yaml``: validation, the whole pipeline, skip-on-rerun."""

import json
from pathlib import Path

import pytest
import yaml

from rscompress.cli import main
from rscompress.errors import UserError
from rscompress.recipe import load_recipe, run_recipe
from tests.fakes import make_fake_dataset, progress_printer_killed_at

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, data):
    recipe = {
        "out": str(tmp_path / "runs"),
        "steps": [
            {
                "name": "base",
                "train": {
                    "data": {"path": str(data), "img_size": 16},
                    "model": "se_resnet18",
                    "epochs": 1,
                    "batch_size": 8,
                },
            },
            {
                "name": "rt",
                "prune": {
                    "parent": "base",
                    "method": "remotetrimmer",
                    "target_macs": 0.3,
                    "loss": "aml+ce",
                    "finetune": {"epochs": 1, "batch_size": 8},
                },
            },
            {
                "name": "student",
                "distill": {"teacher": "base", "student": "rt", "loss": "dkd", "fit": {"epochs": 1, "batch_size": 8}},
            },
            {"name": "onnx", "export": {"run": "student", "parity_images": 8}},
            {
                "name": "speed",
                "bench": {
                    "runs": ["rt", "student"],
                    "batch_sizes": [1],
                    "threads": [1],
                    "engines": ["onnxruntime"],
                    "warmup": 1,
                    "repeats": 3,
                },
            },
        ],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_pipeline_runs_then_skips_finished_steps(tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=6, size=20)
    path = _recipe(tmp_path, data)
    first = run_recipe(path, quiet=True)
    assert set(first) == {"base", "rt", "student", "onnx", "speed"}
    assert abs(first["rt"]["macs_kept"] / 0.3 - 1) <= 0.01
    assert (tmp_path / "runs" / "student" / "model.onnx").is_file()
    again = run_recipe(path, quiet=True)
    assert all(r.get("skipped") == "complete" for r in again.values())
    assert again["rt"]["top1"] == first["rt"]["top1"]
    # An edited step is not silently reused: the finished run dir was made otherwise.
    recipe = yaml.safe_load(path.read_text())
    recipe["steps"][1]["prune"]["target_macs"] = 0.2
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError, match=r"runs/rt was made with other settings \(method_params\.target_macs: 0\.3"):
        run_recipe(path, quiet=True)


def test_recipe_killed_in_sparse_training_continues_there(tmp_path, monkeypatch):
    from rscompress import api

    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=6, size=20)
    recipe = {
        "out": str(tmp_path / "runs"),
        "steps": [
            {
                "name": "base",
                "train": {
                    "data": {"path": str(data), "img_size": 16},
                    "model": "resnet18",
                    "epochs": 1,
                    "batch_size": 8,
                },
            },
            {
                "name": "slim",
                "prune": {
                    "parent": "base",
                    "method": "slim",
                    "target_macs": 0.5,
                    "sparse_epochs": 2,
                    "finetune": {"epochs": 1, "batch_size": 8},
                },
            },
            # the same pruned model fine-tuned by KD: no second sparse training
            {
                "name": "slim-kd",
                "prune": {
                    "parent": "base",
                    "method": "slim",
                    "target_macs": 0.5,
                    "sparse_epochs": 2,
                    "loss": "kd",
                    "pruned_from": "slim",
                    "finetune": {"epochs": 1, "batch_size": 8},
                },
            },
            # another budget pruned from the same sparse training: no second one either
            {
                "name": "slim-third",
                "prune": {
                    "parent": "base",
                    "method": "slim",
                    "target_macs": 0.35,
                    "sparse_epochs": 2,
                    "sparse_from": "slim",
                    "finetune": {"epochs": 1, "batch_size": 8},
                },
            },
        ],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))

    with monkeypatch.context() as m:
        m.setattr(api, "_progress_printer", progress_printer_killed_at("sparse epoch 2/"))
        with pytest.raises(KeyboardInterrupt):
            run_recipe(path, quiet=True)
    assert (tmp_path / "runs" / "slim" / "prune-phase" / "checkpoint" / "latest.json").is_file()
    epochs: list[str] = []
    monkeypatch.setattr(api, "_progress_printer", lambda _quiet: epochs.append)
    results = run_recipe(path, quiet=True)
    assert results["base"]["skipped"] == "complete"
    assert [e.split(":")[0] for e in epochs if e.startswith("sparse epoch")] == ["sparse epoch 2/2"]
    assert len(results["slim"]["sparse_training"]["history"]) == 2
    slim_record = json.loads((tmp_path / "runs" / "slim" / "prune.json").read_text())
    assert results["slim-kd"]["sparse_training"] == slim_record["sparse_training"]
    assert results["slim-kd"]["loss"] == "kd" and results["slim-kd"]["pruned_from"].endswith("runs/slim")
    third = results["slim-third"]
    assert third["sparse_training"] == {
        **slim_record["sparse_training"],
        "taken_from": third["sparse_training"]["taken_from"],
    }
    assert third["sparse_training"]["taken_from"].endswith("runs/slim") and abs(third["macs_kept"] / 0.35 - 1) <= 0.01


@pytest.mark.parametrize(
    "steps,needle",
    [
        ([{"name": "a"}], "exactly one of"),
        ([{"name": "a", "train": {"model": "resnet18"}}], "data"),
        ([{"name": "a", "train": {"data": {"path": "x", "img_size": 0}, "model": "resnet18"}}], "img_size"),
        ([{"name": "a", "prune": {"parent": "b", "method": "l1", "finetune": {}}}], "exactly one of"),
        ([{"name": "a", "export": {"run": "b", "typo": 1}}], "typo"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, steps, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"out": "x", "steps": steps}))
    with pytest.raises(UserError, match=needle):
        load_recipe(path)


def test_cli_bad_yaml_is_one_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("out: [unclosed\n")
    assert main(["run", str(path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(recipe):
    load_recipe(recipe)


@pytest.mark.parametrize(
    "bad_step,needle",
    [
        (
            {"name": "p", "prune": {"parent": "bse", "method": "l1", "target_macs": 0.5, "finetune": {"epochs": 1}}},
            "step 'p': parent 'bse' is neither an earlier",
        ),
        (
            {"name": "d", "distill": {"teacher": "base", "student": "nope", "fit": {"epochs": 1}}},
            "step 'd': student 'nope' is neither",
        ),
        ({"name": "e", "export": {"run": "later"}}, "step 'e': run 'later' is a later step"),
        ({"name": "b", "bench": {"runs": ["base", "gone"]}}, "step 'b': runs 'gone' is neither"),
    ],
)
def test_unknown_reference_fails_before_any_step_trains(tmp_path, bad_step, needle, capsys):
    data = make_fake_dataset(tmp_path, per_class=2, size=16)
    train = {"data": {"path": str(data), "img_size": 16}, "model": "resnet18", "epochs": 1, "batch_size": 4}
    steps = [{"name": "base", "train": train}, bad_step, {"name": "later", "train": train}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "runs"), "steps": steps}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "runs").exists()  # not one step ran


def test_edited_export_step_is_redone_and_a_foreign_file_refused(tmp_path):
    data = make_fake_dataset(tmp_path, per_class=3, size=16)
    train = {"data": {"path": str(data), "img_size": 16}, "model": "resnet18", "epochs": 1, "batch_size": 4}
    recipe = {
        "out": str(tmp_path / "runs"),
        "steps": [{"name": "base", "train": train}, {"name": "onnx", "export": {"run": "base", "parity_images": 2}}],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    first = run_recipe(path, quiet=True)
    onnx = tmp_path / "runs" / "base" / "model.onnx"
    assert first["onnx"]["n_images"] == 2 and onnx.is_file()
    assert run_recipe(path, quiet=True)["onnx"]["skipped"] == "complete"
    # Edited: exported again with the new settings, never skipped on the old file.
    recipe["steps"][1]["export"]["parity_images"] = 3
    path.write_text(yaml.safe_dump(recipe))
    assert run_recipe(path, quiet=True)["onnx"]["n_images"] == 3
    assert json.loads((tmp_path / "runs" / "onnx" / "export.json").read_text())["settings"]["parity_images"] == 3
    assert run_recipe(path, quiet=True)["onnx"]["skipped"] == "complete"
    # A model.onnx this step did not write (its record gone) is kept, and the step refused.
    (tmp_path / "runs" / "onnx" / "export.json").unlink()
    before = onnx.read_bytes()
    with pytest.raises(UserError, match=r"model\.onnx is there but this recipe's step did not write it"):
        run_recipe(path, quiet=True)
    assert onnx.read_bytes() == before
