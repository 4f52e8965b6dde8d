"""Whole training runs on tiny data: resume after kill -9, torchrun, NaN stop, run-dir contract."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rscompress import api
from rscompress.artifacts import RunDir
from rscompress.config import DataConfig, TrainConfig
from rscompress.engine.trainer import TrainingDiverged
from rscompress.errors import UserError
from rscompress.locking import LOCK_FILE
from tests.fakes import make_fake_dataset

TRAIN_ARGS = ["--model", "resnet18", "--img-size", "16", "--batch-size", "8", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("data"), name="rsscn7", per_class=6, size=20)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "RSCOMPRESS_CACHE": str(tmp_path_factory.mktemp("cache")), "PYTHONUNBUFFERED": "1"}


def _cli(*args):
    return [sys.executable, "-m", "rscompress", *args]


def _weights(run: Path) -> dict:
    return RunDir(run).load_state_dict()


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_matches_uninterrupted_run(tmp_path, dataset, env):
    epochs = ["--epochs", "4"]
    full = tmp_path / "full"
    subprocess.run(_cli("train", "--data", str(dataset), "--out", str(full), *TRAIN_ARGS, *epochs), env=env, check=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", "--data", str(dataset), "--out", str(killed), *TRAIN_ARGS, *epochs), env=env)
    committed = killed / "checkpoint" / "latest.json"  # epoch 1 is on disk: kill during epoch 2
    deadline = time.time() + 120
    while time.time() < deadline and not committed.is_file():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not RunDir(killed).is_complete(), "the run finished before it could be killed"
    # Its lock file stays behind; the lock itself (flock) went with the process.
    assert (killed / LOCK_FILE).read_text() == f"{proc.pid}\n"

    # Without --resume the unfinished run is protected, not overwritten.
    refused = subprocess.run(
        _cli("train", "--data", str(dataset), "--out", str(killed), *TRAIN_ARGS, *epochs),
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "--resume" in refused.stderr

    subprocess.run(
        _cli("train", "--data", str(dataset), "--out", str(killed), *TRAIN_ARGS, *epochs, "--resume"),
        env=env,
        check=True,
    )
    a, b = RunDir(full).load_metrics(), RunDir(killed).load_metrics()
    for key in ("top1", "kappa", "best_epoch", "macs", "params"):
        assert a[key] == b[key], key
    assert a["test"]["confusion"] == b["test"]["confusion"]
    wa, wb = _weights(full), _weights(killed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = [json.loads(line) for line in (killed / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(4))


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, dataset, env):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "rscompress",
        "train",
        "--data",
        str(dataset),
        "--out",
        str(out),
        *TRAIN_ARGS,
        "--epochs",
        "2",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = RunDir(out).load_metrics()
    assert metrics["timings"]["world_size"] == 2
    # Rank 0 alone writes: one history line per epoch, not one per process.
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
    model, _ = RunDir(out).load_model()
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 7)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("RSCOMPRESS_CACHE", str(tmp_path / "cache"))
    calls = {"n": 0}
    from rscompress.engine import trainer

    real_fit = trainer.fit

    def poisoned_loss(model, x, y, epoch):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return (loss * float("nan") if epoch == 1 else loss), logits

    def fit_with_poison(*args, **kwargs):
        calls["n"] += 1
        return real_fit(*args, **{**kwargs, "loss_fn": poisoned_loss})

    monkeypatch.setattr(api, "fit", fit_with_poison)
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2.*after epoch 1"):
        api.train(
            DataConfig(path=dataset, img_size=16),
            TrainConfig(model="resnet18", epochs=3, batch_size=8),
            run,
            quiet=True,
        )
    ckpt = run / "checkpoint"
    assert json.loads((ckpt / "latest.json").read_text()) == {"epoch_dir": "epoch-0000"}
    assert (ckpt / "best.safetensors").is_file()
    assert not RunDir(run).is_complete()
    assert issubclass(TrainingDiverged, UserError)  # the CLI shows it as one line, exit 2


def test_weights_gone_nan_under_a_finite_loss_stop_before_they_are_checkpointed(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("RSCOMPRESS_CACHE", str(tmp_path / "cache"))
    from rscompress.engine import trainer

    real_fit = trainer.fit

    def poison_bn_statistics(model, x, y, epoch):
        # Train-mode BN uses batch statistics, so the training loss stays finite; the running
        # statistics that evaluation uses do not.
        if epoch == 1:
            with torch.no_grad():
                next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("nan"))
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y), logits

    monkeypatch.setattr(api, "fit", lambda *a, **kw: real_fit(*a, **{**kw, "loss_fn": poison_bn_statistics}))
    run = tmp_path / "nan-weights"
    with pytest.raises(TrainingDiverged, match=r"validation loss became nan after epoch 2.*after epoch 1"):
        api.train(
            DataConfig(path=dataset, img_size=16),
            TrainConfig(model="resnet18", epochs=3, batch_size=8),
            run,
            quiet=True,
        )
    assert json.loads((run / "checkpoint" / "latest.json").read_text()) == {"epoch_dir": "epoch-0000"}
    assert not RunDir(run).is_complete()


def test_run_dir_contract_and_evaluate(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("RSCOMPRESS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    metrics = api.train(
        DataConfig(path=dataset, img_size=16), TrainConfig(model="resnet18", epochs=2, batch_size=8), run, quiet=True
    )
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "history.jsonl",
        "metrics.json",
        "model.safetensors",
        "split.json",
    ]  # resume state gone
    config = json.loads((run / "config.json").read_text())
    for key in ("model", "num_classes", "class_names", "img_size", "mean", "std", "versions", "method", "parent"):
        assert key in config
    assert config["versions"]["torch"] == torch.__version__
    result = api.evaluate(run, quiet=True)
    for key in ("top1", "kappa", "macs", "params", "num_classes", "split", "n_images"):
        assert key in result
    assert result["top1"] == pytest.approx(metrics["top1"])
    assert result["n_images"] == metrics["n_images"] == 7  # 20 % of 7 classes x 6, at least 1 each
    # A finished run is never overwritten.
    with pytest.raises(UserError, match="already holds a finished run"):
        api.train(DataConfig(path=dataset, img_size=16), TrainConfig(model="resnet18", epochs=2), run, quiet=True)
    # Evaluating on another folder with the same classes uses every image there.
    other = make_fake_dataset(tmp_path / "other", name="rsscn7", per_class=3, size=20)
    assert api.evaluate(run, data_path=other, quiet=True)["n_images"] == 21
