"""``--resume --override KEY=VALUE`` (issue 35, recovery): a diverged or stopped run continued
from its last good checkpoint with a new training setting, recorded, and checked as exactly
that difference afterwards."""

import json
import shutil

import pytest

from rscompress import api
from rscompress.cli import main
from rscompress.config import DataConfig, OptimConfig, TrainConfig
from rscompress.engine import trainer
from rscompress.errors import UserError
from tests.fakes import make_fake_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("d"), name="rsscn7", per_class=4, size=16)


def train_args(dataset, out, *more):
    return [str(a) for a in ("train", "--data", dataset, "--model", "resnet18", "--img-size", 16,
            "--batch-size", 8, "--schedule", "constant", "--out", out, "-q", *more)]  # fmt: skip


def history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_diverged_run_resumes_with_a_lower_lr_and_records_it(tmp_path, dataset, capsys):
    out = tmp_path / "run"
    assert main(train_args(dataset, out, "--epochs", 2, "--lr", "1e6")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume --override lr=" in err[0], err
    assert main(train_args(dataset, out, "--epochs", 2, "--lr", "1e6", "--resume", "--override", "lr=0.01")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["optim"]["lr"] == 0.01
    assert config["overrides"] == [{"setting": "lr", "old": 1e6, "new": 0.01, "epoch": 0}]
    rows = history(out)
    assert [r["epoch"] for r in rows] == [0, 1] and rows[0]["lr"] == 0.01
    assert rows[0]["overrides"] == config["overrides"] and "overrides" not in rows[1]
    assert json.loads((out / "metrics.json").read_text())["val"]["loss"] < 100

    # The finished run is reused under its first options or the overridden ones, not a third.
    data = DataConfig(path=dataset, img_size=16)

    def cfg(lr):
        return TrainConfig(model="resnet18", epochs=2, batch_size=8, optim=OptimConfig(lr=lr, schedule="constant"))

    for lr in (1e6, 0.01):
        assert api.train(data, cfg(lr), out, quiet=True, reuse_finished=True)["skipped"] == "complete"
    with pytest.raises(UserError, match=r"train\.optim\.lr: 0\.01 there, 0\.5 now"):
        api.train(data, cfg(0.5), out, quiet=True, reuse_finished=True)


def test_override_takes_effect_at_the_epoch_after_the_last_checkpoint(tmp_path, dataset, monkeypatch, capsys):
    out = tmp_path / "run"
    scheduled = trainer.apply_schedule

    def exploding_in_epoch_2(optimizer, progress, epochs, cfg):
        """A run at lr 0.05 whose rate leaps to 1e6 in its second epoch: it diverges there,
        after a good checkpoint; at any other lr the schedule is the real one."""
        if progress >= 1 and cfg.lr == 0.05:
            cfg = cfg.model_copy(update={"lr": 1e6})
        return scheduled(optimizer, progress, epochs, cfg)

    monkeypatch.setattr(trainer, "apply_schedule", exploding_in_epoch_2)
    args = train_args(dataset, out, "--epochs", 2, "--lr", "0.05")
    assert main(args) == 2
    assert "last good checkpoint: after epoch 1" in capsys.readouterr().err
    assert [r["epoch"] for r in history(out)] == [0]
    # The same settings would diverge again, and another --lr is refused (the settings check).
    assert main([*args, "--resume", "--lr", "0.01"]) == 2
    assert "train.optim.lr: 0.05 there, 0.01 now" in capsys.readouterr().err

    built, build = [], trainer.build_optimizer
    monkeypatch.setattr(trainer, "build_optimizer", lambda *a: built.append(build(*a)) or built[-1])
    more = ["--resume", "--override", "lr=0.01", "--override", "epochs=3", "--override", "weight-decay=0"]
    assert main([*args, *more]) == 0, capsys.readouterr().err
    # The checkpoint's optimizer state held the old decay: the new one replaced it.
    assert [g["weight_decay"] for g in built[-1].param_groups] == [0.0]
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 3 and config["train"]["optim"]["weight_decay"] == 0
    assert config["overrides"] == [
        {"setting": "lr", "old": 0.05, "new": 0.01, "epoch": 1},
        {"setting": "epochs", "old": 2, "new": 3, "epoch": 1},
        {"setting": "weight_decay", "old": 5e-4, "new": 0.0, "epoch": 1},
    ]
    rows = history(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["lr"] for r in rows] == [0.05, 0.01, 0.01]
    assert "overrides" not in rows[0] and rows[1]["overrides"] == config["overrides"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dataset):
    """A run dir with its config.json, and the options that made it (onecycle, the default)."""

    def args(out):
        return [str(a) for a in ("train", "--data", dataset, "--model", "resnet18", "--img-size", 16,
                "--epochs", 1, "--batch-size", 8, "--out", out, "-q")]  # fmt: skip

    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(args(out)) == 0
    return out, args


@pytest.mark.parametrize(
    "override,needle",
    [
        ("seed=1", "--override seed: it changes what data or model is trained"),
        ("model=resnet34", "--override model: it changes what data or model is trained"),
        ("batch_size=4", "--override batch_size: it changes what data or model is trained"),
        ("img-size=32", "--override img_size: it changes what data or model is trained"),
        ("momentum=0.5", "--override momentum: not a setting an override can change"),
        ("lr", "--override 'lr': expected KEY=VALUE"),
        ("lr=", "--override 'lr=': expected KEY=VALUE"),
        ("lr=abc", "--override: optim.lr: Input should be a valid number"),
        ("lr=nan", "--override: optim.lr: Input should be a finite number"),
        ("lr=-1", "--override: optim.lr: Input should be greater than 0"),
        ("warmup_epochs=2", "--override: optim: onecycle warms up by itself"),
    ],
)
def test_bad_overrides_are_one_line(tmp_path, finished_run, capsys, override, needle):
    out, args = finished_run
    out = shutil.copytree(out, tmp_path / "run")
    (out / "metrics.json").unlink()  # unfinished again, to be continued
    before = (out / "config.json").read_bytes()
    assert main([*args(out), "--resume", "--override", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert (out / "config.json").read_bytes() == before


def test_override_needs_resume_and_a_run(tmp_path, dataset, capsys):
    out = tmp_path / "run"
    assert main(train_args(dataset, out, "--epochs", 1, "--override", "lr=0.01")) == 2
    assert "--override changes a setting of a run being continued: add --resume" in capsys.readouterr().err
    assert main(train_args(dataset, out, "--epochs", 1, "--resume", "--override", "lr=0.01")) == 2
    assert "holds no run to continue (no config.json)" in capsys.readouterr().err
    assert not (out / "config.json").exists()


@pytest.mark.parametrize("step", ["prune", "distill"])
def test_prune_and_distill_continue_with_an_override(tmp_path, finished_run, monkeypatch, capsys, step):
    parent, _ = finished_run
    out = tmp_path / step
    scheduled = trainer.apply_schedule

    def exploding_in_epoch_2(optimizer, progress, epochs, cfg):
        if progress >= 1 and cfg.lr == 0.05:
            cfg = cfg.model_copy(update={"lr": 1e6})
        return scheduled(optimizer, progress, epochs, cfg)

    common = ["--batch-size", "8", "--lr", "0.05", "--schedule", "constant", "--out", str(out), "-q"]
    if step == "prune":
        args = ["prune", str(parent), "--method", "l1", "--target-macs", "0.5", "--finetune-epochs", "2", *common]
        # Nothing pruned yet: no fine-tuning to continue.
        assert main([*args, "--resume", "--override", "lr=0.01"]) == 2
        assert "--override changes the fine-tuning of a pruned model" in capsys.readouterr().err
    else:
        args = ["distill", "--teacher", str(parent), "--student", "resnet18", "--epochs", "2", *common]
    monkeypatch.setattr(trainer, "apply_schedule", exploding_in_epoch_2)
    assert main(args) == 2
    assert "last good checkpoint: after epoch 1" in capsys.readouterr().err
    assert main([*args, "--resume", "--override", "lr=0.01"]) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["optim"]["lr"] == 0.01
    assert config["overrides"] == [{"setting": "lr", "old": 0.05, "new": 0.01, "epoch": 1}]
    assert [r.get("overrides") for r in history(out)] == [None, config["overrides"]]


def test_a_diverged_sparse_training_says_to_start_anew_not_to_override(tmp_path, finished_run, capsys):
    # The fit loop's own advice (--resume --override lr=) would be refused in a phase: the
    # phase's error must name the way that works.
    parent, _ = finished_run
    out = tmp_path / "slim"
    args = ["prune", str(parent), "--method", "slim", "--target-macs", "0.5", "--sparse-epochs", "2",
            "--sparse-lr", "1e9", "--batch-size", "8", "--out", str(out), "-q"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "became" in err[0] and "--override" not in err[0], err
    assert "start it anew in another --out with a lower --sparse-lr" in err[0]
