"""A run dir whose split.json is gone: every step that reads the run's split (evaluate, prune,
distill, export, a resumed train) refuses it by name, unless --resplit opts in, recorded."""

import json
import shutil

import pytest

from rscompress import api
from rscompress.cli import main
from rscompress.config import DataConfig, DistillConfig, FitConfig, Int8Config, PruneConfig, TrainConfig
from rscompress.deploy.int8 import export_int8_run
from rscompress.deploy.onnx import export_run
from rscompress.errors import UserError
from tests.fakes import make_fake_dataset

FIT = FitConfig(epochs=1, batch_size=8)
MISSING = r"split\.json is missing: .* pass --resplit"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained parent and a run pruned from it, both finished."""
    root = tmp_path_factory.mktemp("missing-split")
    data = make_fake_dataset(root, name="rsscn7", per_class=6, size=20)
    parent, pruned = root / "parent", root / "pruned"
    api.train(
        DataConfig(path=data, img_size=16), TrainConfig(model="resnet18", epochs=1, batch_size=8), parent, quiet=True
    )
    api.prune(parent, PruneConfig(method="l1", target_macs=0.5, finetune=FIT), pruned, quiet=True)
    return {"parent": parent, "pruned": pruned}


@pytest.fixture(params=["parent", "pruned"])
def without_split(request, runs, tmp_path):
    run = shutil.copytree(runs[request.param], tmp_path / request.param)
    (run / "split.json").unlink()
    return run


def test_every_step_reading_the_split_refuses_a_run_without_it(without_split, tmp_path, capsys):
    run = without_split
    with pytest.raises(UserError, match=MISSING):
        api.evaluate(run, quiet=True)
    with pytest.raises(UserError, match=MISSING):
        api.prune(run, PruneConfig(method="l1", target_macs=0.5, finetune=FIT), tmp_path / "child", quiet=True)
    with pytest.raises(UserError, match=MISSING):
        api.distill(run, "resnet18", DistillConfig(loss="kd", fit=FIT), tmp_path / "student", quiet=True)
    with pytest.raises(UserError, match=MISSING):
        export_run(run, n_images=2)
    with pytest.raises(UserError, match=MISSING):
        export_int8_run(run, cfg=Int8Config(calib_images=8, repeats=2))
    assert not (tmp_path / "child").exists() and not (tmp_path / "student").exists()
    assert not (run / "model.onnx").exists() and not (run / "split.json").exists()

    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / 'split.json'} is missing" in err and "--resplit" in err


def test_resplit_opts_in_and_is_recorded(without_split, tmp_path):
    run = without_split
    evaluated = api.evaluate(run, quiet=True, resplit=True)
    assert evaluated["resplit"] is True and any("was missing" in w for w in evaluated["data_warnings"])

    child = tmp_path / "child"
    cfg = PruneConfig(method="l1", target_macs=0.5, resplit=True, finetune=FIT)
    metrics = api.prune(run, cfg, child, quiet=True)
    assert metrics["resplit"] is True and any("was missing" in w for w in metrics["data_warnings"])
    assert json.loads((child / "config.json").read_text())["method_params"]["resplit"] is True
    assert (child / "split.json").is_file()  # the new split, kept with the run it made

    # With its split there, --resplit is refused: it would record a re-split that did not happen.
    with pytest.raises(UserError, match=r"--resplit: .*split\.json is there"):
        api.evaluate(child, quiet=True, resplit=True)


def test_a_resumed_prune_keeps_its_own_copy_of_the_parents_split(runs, tmp_path, kill_at_the_end):
    parent = shutil.copytree(runs["parent"], tmp_path / "parent")
    cfg, out = PruneConfig(method="l1", target_macs=0.5, finetune=FIT), tmp_path / "pruned"
    kill_at_the_end(api.prune, parent, cfg, out, quiet=True)
    (parent / "split.json").unlink()  # gone since: the run's own copy is the split it trained on
    assert api.prune(parent, cfg, out, resume=True, quiet=True)["resplit"] is False
    assert (out / "split.json").read_bytes() == (runs["parent"] / "split.json").read_bytes()


def test_a_train_resumed_without_its_split_is_refused(runs, tmp_path, kill_at_the_end):
    data_cfg = DataConfig.model_validate(json.loads((runs["parent"] / "config.json").read_text())["data"])
    cfg, out = TrainConfig(model="resnet18", epochs=1, batch_size=8), tmp_path / "run"
    kill_at_the_end(api.train, data_cfg, cfg, out, quiet=True)
    (out / "split.json").unlink()
    with pytest.raises(UserError, match=r"split\.json is missing: the checkpoint .* was trained on the split it held"):
        api.train(data_cfg, cfg, out, resume=True, quiet=True)
