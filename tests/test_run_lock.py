"""One writer per run dir (locking.py): a second process writing the same --out is refused,
naming the holder; a lock left by a killed process blocks nothing."""

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import rscompress as rsc
from rscompress import api
from rscompress.artifacts import RunDir
from rscompress.cli import main
from rscompress.config import DataConfig, DistillConfig, FitConfig, PruneConfig, TrainConfig
from rscompress.errors import UserError
from rscompress.locking import LOCK_FILE
from tests.fakes import make_fake_dataset

TRAIN = ["--model", "resnet18", "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--quiet"]
_HOLD = textwrap.dedent(
    """
    import sys
    from rscompress.artifacts import RunDir
    with RunDir(sys.argv[1]).owned():
        print("held", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("lock-data"), name="rsscn7", per_class=6, size=20)


@pytest.fixture(scope="module")
def parent(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lock-parent") / "parent"
    api.train(
        DataConfig(path=data, img_size=16), TrainConfig(model="resnet18", epochs=1, batch_size=8), out, quiet=True
    )
    return out


class Holder:
    """Another process holding a run dir the way a step does (RunDir.owned)."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "held\n"
        self.pid = self.proc.pid

    def kill_9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def holder():
    holders: list[Holder] = []

    def start(path: Path) -> Holder:
        holders.append(Holder(path))
        return holders[-1]

    yield start
    for h in holders:
        if h.proc.poll() is None:
            h.kill_9()


def test_a_second_train_into_a_held_run_dir_exits_2_naming_the_holder_and_writes_nothing(
    data, tmp_path, holder, capsys
):
    out = tmp_path / "run"
    held = holder(out)
    code = main(["train", "--data", str(data), "--out", str(out), *TRAIN, "--seed", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{out} is in use by process {held.pid}" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the holder's


def test_prune_and_distill_into_a_held_run_dir_are_refused(parent, tmp_path, holder):
    out = tmp_path / "held"
    held = holder(out)
    fit = FitConfig(epochs=1, batch_size=8)
    with pytest.raises(UserError, match=f"in use by process {held.pid}"):
        api.prune(parent, PruneConfig(method="l1", target_macs=0.5, finetune=fit), out, quiet=True)
    with pytest.raises(UserError, match=f"in use by process {held.pid}"):
        api.distill(parent, "resnet18", DistillConfig(loss="kd", fit=fit), out, quiet=True)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_the_python_api_out_dirs_are_held_too(tmp_path, holder):
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = rsc.create_model("resnet18", 4, small_input=True)
    held = holder(tmp_path / "api")
    with pytest.raises(UserError, match=f"in use by process {held.pid}"):
        rsc.train(model, loader, loader, epochs=1, out=tmp_path / "api")
    with pytest.raises(UserError, match=f"in use by process {held.pid}"):
        rsc.save(model, tmp_path / "api", example_input=torch.zeros(1, 3, 32, 32))


def test_a_lock_left_by_a_killed_writer_does_not_block_resume(data, tmp_path, holder, kill_at_the_end):
    out = tmp_path / "run"
    data_cfg, cfg = DataConfig(path=data, img_size=16), TrainConfig(model="resnet18", epochs=1, batch_size=8)
    kill_at_the_end(api.train, data_cfg, cfg, out, quiet=True)
    holder(out).kill_9()  # kill -9 of the process holding the run: its lock file stays behind
    assert (out / LOCK_FILE).is_file() and RunDir(out).is_started()
    assert main(["train", "--data", str(data), "--out", str(out), *TRAIN, "--resume"]) == 0
    assert RunDir(out).is_complete() and not (out / LOCK_FILE).exists()  # a finished step takes it away


def test_a_step_that_fails_before_writing_leaves_no_run_dir(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--data", str(tmp_path / "no-such-data"), "--out", str(out), *TRAIN]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()


def test_out_naming_a_file_is_one_clear_error(data, tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("mine\n")
    assert main(["train", "--data", str(data), "--out", str(out), *TRAIN]) == 2
    assert "is a file, not a run dir" in capsys.readouterr().err and out.read_text() == "mine\n"


def test_an_export_into_a_held_run_is_refused(parent, tmp_path, holder):
    from rscompress.deploy.int8 import export_int8_run
    from rscompress.deploy.onnx import export_run

    run = shutil.copytree(parent, tmp_path / "run")
    held = holder(run)
    with pytest.raises(UserError, match=f"in use by process {held.pid}"):
        export_run(run, n_images=2)
    with pytest.raises(UserError, match=f"in use by process {held.pid}"):
        export_int8_run(run, tmp_path / "elsewhere.onnx")  # its record goes into the run dir
    assert not (run / "model.onnx").exists() and not (tmp_path / "elsewhere.onnx").exists()
