"""The CLI verbs of the foundation on tiny data: data inspect, train (bad files, --weights), evaluate --json."""

import json

import pytest

from rscompress.cli import main
from rscompress.models import create_model
from rscompress.models.weights import save_weights
from tests.fakes import make_fake_dataset, write_duplicate_pair, write_truncated_jpeg

TINY = ["--model", "resnet18", "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--quiet"]


@pytest.fixture()
def messy(tmp_path):
    root = make_fake_dataset(tmp_path, name="rsscn7", per_class=5, size=20)
    write_truncated_jpeg(root / "aGrass" / "broken.jpg")
    write_duplicate_pair(root / "bField")
    return root


def test_data_inspect_reports_counts_bad_files_and_duplicates(capsys, messy):
    assert main(["data", "inspect", str(messy), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_classes"] == 7 and report["dataset"]["key"] == "rsscn7"
    assert [b["path"] for b in report["bad_files"]] == ["aGrass/broken.jpg"]
    assert len(report["duplicate_groups"]) == 1
    assert any("2800" in w for w in report["warnings"])  # count mismatch: a warning, not a crash
    assert main(["data", "inspect", str(messy)]) == 0
    text = capsys.readouterr().out
    assert "broken.jpg" in text and "identical pixels" in text


def test_bad_files_stop_training_unless_skipped(capsys, messy, tmp_path):
    code = main(["train", "--data", str(messy), "--out", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "aGrass/broken.jpg" in err and "--skip-bad" in err
    assert not (tmp_path / "r").exists()
    assert main(["train", "--data", str(messy), "--out", str(tmp_path / "r"), *TINY, "--skip-bad"]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [b["path"] for b in metrics["bad_files"]] == ["aGrass/broken.jpg"]
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    dup_sides = {part for part in ("train", "val", "test") for e in split[part] if "dup" in e["path"]}
    assert len(dup_sides) == 1  # identical pixels stay on one side


def test_evaluate_json_is_one_object(capsys, tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=5, size=20)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r"), "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)
    assert out.count("\n") == 1
    for key in ("top1", "kappa", "macs", "params", "num_classes", "split", "n_images"):
        assert key in result


def test_train_with_a_test_folder_needs_no_fraction_flags(capsys, tmp_path):
    data = make_fake_dataset(tmp_path / "train", name="rsscn7", per_class=5, size=20)
    test = make_fake_dataset(tmp_path / "test", name="rsscn7", per_class=2, size=24)  # no twin of a train image
    assert main(["train", "--data", str(data), "--test-data", str(test), "--out", str(tmp_path / "r"), *TINY]) == 0
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert len(split["test"]) == 14 and all(e["path"].startswith("test:") for e in split["test"])
    assert len(split["train"]) + len(split["val"]) == 35
    code = main(["train", "--data", str(data), "--test-data", str(test), "--test-fraction", "0.2", "--out",
                 str(tmp_path / "s"), *TINY])  # fmt: skip
    assert code == 2 and "test_fraction must be 0" in capsys.readouterr().err


def test_weights_strict_and_partial(capsys, tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=5, size=20)
    good, other = tmp_path / "good.safetensors", tmp_path / "other.safetensors"
    save_weights(create_model("resnet18", 7), good)
    save_weights(create_model("resnet18", 5), other)  # classifier shape differs
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), *TINY, "--weights", str(good)]) == 0
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "b"), *TINY, "--weights", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "fc.weight" in err
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "b"),
                *TINY,
                "--weights",
                str(other),
                "--allow-partial",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert any("fc.weight" in m for m in metrics["init_weights"]["mismatched"])
    assert (
        main(["train", "--data", str(data), "--out", str(tmp_path / "c"), *TINY, "--weights", str(other), "--new-head"])
        == 0
    )
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["init_weights"]["fresh"] == ["fc.weight", "fc.bias"] and not metrics["init_weights"]["mismatched"]


def test_train_defaults_are_the_recommended_recipe_and_every_recipe_flag_reaches_config(tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=5, size=20)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "d"), *TINY]) == 0
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    optim = config["train"]["optim"]
    assert (optim["schedule"], optim["lr"], optim["nesterov"], optim["pct_start"], optim["cycle_momentum"]) == (
        "onecycle",
        0.1,
        True,
        0.15,
        True,
    )
    assert config["train"]["label_smoothing"] == 0.1 and config["data"]["augment_draw"] == "batch"
    flags = [
        "--schedule",
        "cosine",
        "--warmup-epochs",
        "2",
        "--no-nesterov",
        "--no-cycle-momentum",
        "--pct-start",
        "0.3",
        "--augment-draw",
        "sample",
        "--lr",
        "0.05",
        "--label-smoothing",
        "0",
    ]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "f"), *TINY, *flags]) == 0
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    optim = config["train"]["optim"]
    assert (
        optim["schedule"],
        optim["warmup_epochs"],
        optim["nesterov"],
        optim["cycle_momentum"],
        optim["pct_start"],
        optim["lr"],
    ) == ("cosine", 2, False, False, 0.3, 0.05)
    assert config["train"]["label_smoothing"] == 0 and config["data"]["augment_draw"] == "sample"


def test_prune_fine_tuning_flags_reach_config(tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=5, size=20)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "p"), *TINY]) == 0
    flags = [
        "--schedule",
        "cosine",
        "--no-nesterov",
        "--no-cycle-momentum",
        "--pct-start",
        "0.3",
        "--drop-last",
        "--label-smoothing",
        "0",
        "--calibration-batches",
        "2",
    ]
    assert (
        main(
            [
                "prune",
                str(tmp_path / "p"),
                "--method",
                "l1",
                "--target-macs",
                "0.5",
                "--finetune-epochs",
                "1",
                "--batch-size",
                "8",
                "--quiet",
                "--out",
                str(tmp_path / "c"),
                *flags,
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["method_params"]["calibration_batches"] == 2
    train = config["train"]
    assert (
        train["optim"]["schedule"],
        train["optim"]["nesterov"],
        train["optim"]["cycle_momentum"],
        train["optim"]["pct_start"],
        train["drop_last"],
        train["label_smoothing"],
    ) == ("cosine", False, False, 0.3, True, 0)
