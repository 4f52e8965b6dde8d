"""``rscompress distill`` end to end on tiny data: registry and run-dir students, frozen teacher."""

import json

import pytest
import torch

from rscompress import api
from rscompress.artifacts import RunDir
from rscompress.cli import main
from rscompress.config import (
    FINETUNE_LR,
    DataConfig,
    DistillConfig,
    FitConfig,
    OptimConfig,
    PruneConfig,
    TrainConfig,
)
from rscompress.errors import UserError
from tests.fakes import make_fake_dataset


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = make_fake_dataset(root, name="rsscn7", per_class=8, size=24)
    run = root / "teacher"
    api.train(
        DataConfig(path=data, img_size=24), TrainConfig(model="resnet18", epochs=1, batch_size=8), run, quiet=True
    )
    return run


def _cfg(loss, **kw):
    return DistillConfig(loss=loss, kd_warmup_epochs=1, fit=FitConfig(epochs=1, batch_size=8), **kw)


@pytest.mark.parametrize("loss", ["ce", "kd", "dkd"])
def test_registry_student_with_each_loss(teacher, tmp_path, loss):
    before = {k: v.clone() for k, v in RunDir(teacher).load_state_dict().items()}
    metrics = api.distill(teacher, "g_ghost_regnetx_tiny", _cfg(loss, small_input=True), tmp_path / "s", quiet=True)
    assert metrics["method"] == f"distill-{loss}"
    assert metrics["teacher_params"] > metrics["params"]
    teacher_metrics = RunDir(teacher).load_metrics()
    assert metrics["teacher_top1"] == teacher_metrics["top1"]
    after = RunDir(teacher).load_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher run is untouched
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["model"] == "g_ghost_regnetx_tiny" and config["method"] == f"distill-{loss}"
    assert (tmp_path / "s" / "split.json").read_bytes() == (teacher / "split.json").read_bytes()
    assert api.evaluate(tmp_path / "s", quiet=True)["top1"] == pytest.approx(metrics["top1"])


def test_pruned_run_as_student_keeps_its_architecture(teacher, tmp_path):
    pruned = tmp_path / "pruned"
    api.prune(
        teacher,
        PruneConfig(method="l1", target_macs=0.3, finetune=FitConfig(epochs=1, batch_size=8)),
        pruned,
        quiet=True,
    )
    metrics = api.distill(teacher, str(pruned), _cfg("dkd"), tmp_path / "pd", quiet=True)
    assert metrics["macs"] == RunDir(pruned).load_metrics()["macs"]
    model, _ = RunDir(tmp_path / "pd").load_model()
    assert model(torch.zeros(1, 3, 24, 24)).shape == (1, 7)


def test_bad_student_and_loss(teacher, tmp_path, capsys):
    with pytest.raises(UserError, match="neither a run dir nor a known model"):
        api.distill(teacher, "ghostnet9000", _cfg("dkd"), tmp_path / "x", quiet=True)
    code = main(
        [
            "distill",
            "--teacher",
            str(teacher),
            "--student",
            "resnet18",
            "--loss",
            "fitnet",
            "--out",
            str(tmp_path / "y"),
        ]
    )
    assert code == 2 and "--loss" in capsys.readouterr().err


def test_resume_with_another_loss_is_refused(teacher, tmp_path, kill_at_the_end):
    out = tmp_path / "s"
    kill_at_the_end(api.distill, teacher, "g_ghost_regnetx_tiny", _cfg("dkd", small_input=True), out, quiet=True)
    with pytest.raises(UserError, match=r"method: \"distill-dkd\" there, \"distill-kd\" now"):
        api.distill(teacher, "g_ghost_regnetx_tiny", _cfg("kd", small_input=True), out, resume=True, quiet=True)


def test_cli_distill_in_bf16_channels_last(teacher, tmp_path):
    out = tmp_path / "bf16"
    assert (
        main(
            [
                "distill",
                "--teacher",
                str(teacher),
                "--student",
                "g_ghost_regnetx_tiny",
                "--small-input",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--bf16",
                "--channels-last",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["bf16"], train["channels_last"]) == (True, True)
    assert train["optim"]["lr"] == OptimConfig().lr  # a new student is trained at the training rate


def test_cli_distill_into_a_run_dir_fine_tunes_at_the_fine_tuning_rate(teacher, tmp_path):
    pruned = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                str(teacher),
                "--method",
                "l1",
                "--target-macs",
                "0.3",
                "--finetune-epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(pruned),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((pruned / "config.json").read_text())["train"]["optim"]["lr"] == FINETUNE_LR
    out = tmp_path / "pd"
    assert (
        main(
            [
                "distill",
                "--teacher",
                str(teacher),
                "--student",
                str(pruned),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["train"]["optim"]["lr"] == FINETUNE_LR


def test_prune_then_distill_from_the_parent(teacher, tmp_path, capsys):
    before = {k: v.clone() for k, v in RunDir(teacher).load_state_dict().items()}
    out = tmp_path / "pdkd"
    assert (
        main(
            [
                "prune",
                str(teacher),
                "--method",
                "l1",
                "--target-macs",
                "0.3",
                "--loss",
                "dkd",
                "--temperature",
                "2",
                "--finetune-epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    metrics = RunDir(out).load_metrics()
    assert metrics["loss"] == "dkd" and metrics["kd"]["temperature"] == 2.0
    after = RunDir(teacher).load_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (
        main(
            [
                "prune",
                str(teacher),
                "--method",
                "l1",
                "--target-macs",
                "0.3",
                "--loss",
                "dkd",
                "--temperature",
                "0",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "--temperature" in capsys.readouterr().err


def test_cached_teacher_logits_are_reused_from_the_second_epoch(tmp_path):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=4, size=16)
    teacher_run = tmp_path / "t"
    data_cfg = DataConfig(path=data, img_size=16, augment=False)
    api.train(data_cfg, TrainConfig(model="resnet18", epochs=1, batch_size=8), teacher_run, quiet=True)
    # One batch holds the whole train split, so both epochs see every train image.
    cfg = DistillConfig(loss="dkd", cache_teacher_logits=True, fit=FitConfig(epochs=2, batch_size=64))
    metrics = api.distill(teacher_run, "g_ghost_regnetx_tiny", cfg, tmp_path / "s", quiet=True)
    n_train = len(json.loads((teacher_run / "split.json").read_text())["train"])
    # Without augmentation epoch 2 sees exactly epoch 1's inputs: all hits.
    assert metrics["teacher_cache_this_process"] == {"hits": n_train, "misses": n_train}
