"""--device: which device a name resolves to, the errors for unusable ones, and whole runs on
every device this machine has (the CPU always; CUDA too where torch sees a GPU)."""

import subprocess
import sys

import pytest
import torch

from rscompress import api
from rscompress.artifacts import setting_differences
from rscompress.config import DataConfig, DistillConfig, FitConfig, PruneConfig, TrainConfig
from rscompress.engine.device import resolve_device
from rscompress.engine.precision import bf16_autocast
from rscompress.errors import UserError
from tests.fakes import make_fake_dataset

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_is_the_cpu_without_a_gpu_and_this_process_gpu_with_one(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    _fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on a 2-GPU machine
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")


def test_unusable_devices_are_one_error_naming_them(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    with pytest.raises(UserError, match=r"--device cuda: torch sees no CUDA device"):
        resolve_device("cuda")
    _fake_gpus(monkeypatch, 2)
    with pytest.raises(UserError, match=r"--device cuda:2: cuda:2 does not exist, torch sees 2 GPU"):
        resolve_device("cuda:2")
    with pytest.raises(UserError, match=r"--device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="must be auto, cpu, cuda or cuda:N"):
        FitConfig(device="cuda0")


def test_cli_rejects_a_bad_device_before_touching_anything(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rscompress",
            "train",
            "--data",
            str(tmp_path),
            "--model",
            "resnet18",
            "--out",
            str(out),
            "--device",
            "gpu",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "--device: must be auto, cpu, cuda or cuda:N (got 'gpu')" in result.stderr
    assert not out.exists()


def test_a_run_resumes_or_is_reused_on_another_device():
    # Where a run trains changes how fast it goes, not what it is; run dirs from before
    # --device existed have no such key at all.
    assert setting_differences({"device": "cpu", "epochs": 2}, {"device": "cuda", "epochs": 2}, "train") == []
    assert setting_differences({"epochs": 2}, {"device": "auto", "epochs": 2}, "train") == []
    assert setting_differences({"epochs": 2}, {"epochs": 3}, "train") != []


@pytest.mark.parametrize("device", DEVICES)
def test_train_distill_and_evaluate_on_each_device(tmp_path, device):
    data = make_fake_dataset(tmp_path / "data", name="rsscn7", per_class=6, size=20)
    teacher = tmp_path / "teacher"
    metrics = api.train(
        DataConfig(path=data, img_size=16),
        TrainConfig(model="resnet18", epochs=1, batch_size=8, device=device),
        teacher,
        quiet=True,
    )
    assert metrics["timings"]["device"].startswith(device)
    evaluated = api.evaluate(teacher, device=device, quiet=True)
    assert evaluated["device"].startswith(device)
    assert evaluated["top1"] == pytest.approx(metrics["top1"])
    student = api.distill(
        teacher,
        "g_ghost_regnetx_tiny",
        DistillConfig(
            loss="dkd",
            small_input=True,
            cache_teacher_logits=True,
            fit=FitConfig(epochs=1, batch_size=8, device=device),
        ),
        tmp_path / "student",
        quiet=True,
    )
    assert student["timings"]["device"].startswith(device)
    assert student["teacher_cache_this_process"]["misses"] > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["nas", "l1rr"])
def test_search_and_sparse_training_run_on_each_device(tmp_path, device, method):
    data = make_fake_dataset(tmp_path / "data", name="rsscn7", per_class=6, size=32)
    parent = tmp_path / "parent"
    api.train(
        DataConfig(path=data, img_size=32), TrainConfig(model="resnet18", epochs=1, batch_size=8), parent, quiet=True
    )
    phase = {"search_epochs": 1} if method == "nas" else {"sparse_epochs": 1}
    metrics = api.prune(
        parent,
        PruneConfig(method=method, target_macs=0.5, **phase, finetune=FitConfig(epochs=1, batch_size=8, device=device)),
        tmp_path / "pruned",
        quiet=True,
    )
    assert metrics["timings"]["device"].startswith(device)
    assert abs(metrics["macs_kept"] / 0.5 - 1) <= 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_follows_the_model_to_cuda():
    conv = torch.nn.Conv2d(3, 4, 3, stride=2).cuda()
    with bf16_autocast(conv, True):
        assert conv(torch.randn(2, 3, 8, 8, device="cuda")).dtype == torch.bfloat16
