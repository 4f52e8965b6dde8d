import json

import pytest
import torch
from torch import nn

from rscompress.engine.checkpoint import (
    TrainingState,
    load_best_weights,
    load_checkpoint,
    save_checkpoint,
)
from rscompress.errors import UserError


def _model_and_optimizer(kind: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if kind == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=1e-3)
    )
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 4)).sum().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_round_trip_restores_model_and_optimizer(tmp_path, kind):
    model, opt = _model_and_optimizer(kind)
    state = TrainingState(epoch=4, best_epoch=2, best_score=(0.5, -1.0), extra={"k": 1})
    save_checkpoint(tmp_path, model, opt, state, is_best=True)

    fresh, fresh_opt = _model_and_optimizer(kind)
    for p in fresh.parameters():
        nn.init.zeros_(p)
    fresh_opt = type(fresh_opt)(fresh.parameters(), **{k: v for k, v in fresh_opt.defaults.items() if k in ("lr",)})
    loaded = load_checkpoint(tmp_path, fresh, fresh_opt)
    assert loaded == state
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=False):
        assert torch.equal(a, b)
    # Same next step from both optimizers: the state (momentum / moments) came back.
    x = torch.randn(16, 4)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), fresh.parameters(), strict=False):
        assert torch.allclose(a, b)
    load_best_weights(tmp_path, fresh)  # refused unless it has every key and shape of the model


def test_latest_points_at_newest_and_old_epochs_are_removed(tmp_path):
    model, opt = _model_and_optimizer("sgd")
    for epoch in range(3):
        save_checkpoint(tmp_path, model, opt, TrainingState(epoch, 0, (0.0, 0.0), {}), is_best=epoch == 0)
    assert json.loads((tmp_path / "latest.json").read_text()) == {"epoch_dir": "epoch-0002"}
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-0002"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_nothing_to_resume_returns_none(tmp_path):
    model, opt = _model_and_optimizer("sgd")
    assert load_checkpoint(tmp_path, model, opt) is None


def test_pickle_in_place_of_checkpoint_is_refused_and_never_runs(tmp_path):
    model, opt = _model_and_optimizer("sgd")
    save_checkpoint(tmp_path, model, opt, TrainingState(0, 0, (0.0, 0.0), {}), is_best=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"x": Payload()}, tmp_path / "epoch-0000" / "model.safetensors")
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_checkpoint(tmp_path, model, opt)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["relative", "absolute", "link", "not a name"])
def test_latest_json_pointing_outside_the_checkpoint_dir_is_refused(tmp_path, where):
    """A complete checkpoint elsewhere (another run's) must not be resumed from through an
    edited latest.json: the name it gives is confined to the checkpoint dir."""
    model, opt = _model_and_optimizer("sgd")
    elsewhere, directory = tmp_path / "elsewhere", tmp_path / "run" / "checkpoint"
    save_checkpoint(elsewhere, model, opt, TrainingState(7, 7, (0.9, 0.0), {}), is_best=True)
    save_checkpoint(directory, model, opt, TrainingState(0, 0, (0.0, 0.0), {}), is_best=True)
    if where == "link":
        (directory / "epoch-0009").symlink_to(elsewhere / "epoch-0007")
    name = {
        "relative": "../../elsewhere/epoch-0007",
        "absolute": str(elsewhere / "epoch-0007"),
        "link": "epoch-0009",
        "not a name": ["epoch-0007"],
    }[where]
    (directory / "latest.json").write_text(json.dumps({"epoch_dir": name}))
    with pytest.raises(UserError, match=r"checkpoint in .*checkpoint is unreadable"):
        load_checkpoint(directory, model, opt)
