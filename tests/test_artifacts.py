"""Run dirs refuse to resume under other settings (config.json), naming what changed."""

import json

import pytest

from rscompress import api
from rscompress.artifacts import setting_differences
from rscompress.config import DataConfig, FitConfig, OptimConfig, TrainConfig
from rscompress.errors import UserError
from tests.fakes import make_fake_dataset


def test_setting_differences_name_every_changed_leaf_but_threads():
    stored = {"epochs": 30, "optim": {"lr": 0.1, "momentum": 0.9}, "threads": 2}
    given = {"epochs": 30, "optim": {"lr": 0.01, "momentum": 0.9, "nesterov": True}, "threads": 1}
    assert setting_differences(stored, given, "train") == [
        "train.optim.lr: 0.1 there, 0.01 now",
        "train.optim.nesterov: false there, true now",
    ]
    assert setting_differences(stored, stored, "train") == []


def test_a_run_saved_before_the_issue_31_options_matches_the_recipe_it_was_trained_with():
    """config.json of a run from before nesterov, OneCycle, augment_draw and drop_last existed:
    the old recipe spelled with the new options continues it, the new defaults do not."""
    old_train = {
        "epochs": 60,
        "batch_size": 64,
        "label_smoothing": 0.1,
        "optim": {
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "milestones": [],
            "gamma": 0.1,
            "warmup_epochs": 2,
        },
    }
    old_data = {"path": "/d", "img_size": 64, "augment": True}
    same_recipe = FitConfig(
        epochs=60,
        label_smoothing=0.1,
        drop_last=True,
        optim=OptimConfig(schedule="cosine", warmup_epochs=2, nesterov=False),
    )
    given = same_recipe.model_dump(mode="json")
    kept = set(old_train) | {"optim", "drop_last"}
    given = {k: v for k, v in given.items() if k in kept}
    assert setting_differences(old_train, given, "train") == []
    assert setting_differences(old_data, {**old_data, "augment_draw": "sample"}, "data") == []
    assert setting_differences(old_data, {**old_data, "augment_draw": "batch"}, "data") == [
        'data.augment_draw: "sample" there, "batch" now'
    ]
    new_defaults = {k: v for k, v in FitConfig(epochs=60).model_dump(mode="json").items() if k in kept}
    assert "train.optim.nesterov: false there, true now" in setting_differences(old_train, new_defaults, "train")


def test_a_run_saved_before_mixing_existed_continues_unmixed_only():
    saved = FitConfig(epochs=60).model_dump(mode="json")
    old = {k: v for k, v in saved.items() if k not in ("mixup_alpha", "cutmix_alpha")}
    assert setting_differences(old, saved, "train") == []
    mixed = FitConfig(epochs=60, cutmix_alpha=1.0).model_dump(mode="json")
    assert setting_differences(old, mixed, "train") == ["train.cutmix_alpha: 0.0 there, 1.0 now"]


def test_train_resume_with_another_recipe_is_refused_and_keeps_the_run(tmp_path, monkeypatch, kill_at_the_end):
    monkeypatch.setenv("RSCOMPRESS_CACHE", str(tmp_path / "cache"))
    data = DataConfig(path=make_fake_dataset(tmp_path, name="rsscn7", per_class=6, size=20), img_size=16)
    cfg = TrainConfig(model="resnet18", epochs=2, batch_size=8, optim=OptimConfig(lr=0.05))
    run = tmp_path / "run"
    kill_at_the_end(api.train, data, cfg, run, quiet=True)
    config = (run / "config.json").read_text()
    other = cfg.model_copy(update={"optim": OptimConfig(lr=0.01)})
    with pytest.raises(UserError, match=r"other settings \(train\.optim\.lr: 0\.05 there, 0\.01 now\)"):
        api.train(data, other, run, resume=True, quiet=True)
    assert (run / "config.json").read_text() == config
    # threads only change the speed: that resume goes on and finishes
    metrics = api.train(data, cfg.model_copy(update={"threads": 1}), run, resume=True, quiet=True)
    assert metrics["epochs"] == 2 and json.loads((run / "config.json").read_text())["train"]["threads"] == 1
