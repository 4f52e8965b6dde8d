"""ONNX export: every architecture family exports with logits equal to PyTorch's, batch axis
dynamic; a parity failure is an error; run dirs export on real images of their test split."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from rscompress.artifacts import RunDir
from rscompress.deploy import onnx as deploy_onnx
from rscompress.deploy.onnx import ParityError, check_parity, export_onnx, export_run
from rscompress.errors import UserError
from tests.deploy.helpers import make_model
from tests.fakes import make_image_folder

ARCHITECTURES = ["resnet18", "mobilenet_v2", "se_resnet18", "g_ghost_regnetx_tiny", "pruned_resnet18"]


def images(n: int = 4, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_export_matches_torch_at_batch_1_and_full_batch(tmp_path, name):
    model = make_model(name)
    path = export_onnx(model, 32, tmp_path / f"{name}.onnx")
    report = check_parity(model, path, images())
    print(f"\nparity {name}: {report.to_dict()}")
    assert report.max_abs_diff <= 1e-4
    assert report.top1_agree == 1.0
    assert report.n_images == 4 and report.batch_sizes == (1, 4)
    assert not model.training  # eval mode kept (and restored)


def test_graph_names_dynamic_batch_and_metadata(tmp_path):
    model = make_model("resnet18").train()  # export must use eval mode and restore the flag
    path = export_onnx(model, 32, tmp_path / "m.onnx", opset=17, metadata={"img_size": "32"})
    assert model.training
    proto = onnx.load(str(path))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("images", "logits")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {p.key: p.value for p in proto.metadata_props} == {"img_size": "32"}
    assert any(o.domain in ("", "ai.onnx") and o.version == 17 for o in proto.opset_import)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left behind


def test_failed_export_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")

    def broken_check(*args, **kwargs):
        raise onnx.checker.ValidationError("broken graph")

    monkeypatch.setattr(deploy_onnx.onnx.checker, "check_model", broken_check)
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(make_model("g_ghost_regnetx_tiny"), 32, path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_tampered_model_fails_parity_with_numbers(tmp_path):
    model = make_model("g_ghost_regnetx_tiny")
    path = export_onnx(model, 32, tmp_path / "m.onnx")
    with torch.no_grad():
        model.fc.bias[0] += 0.5  # the file no longer matches the model
    with pytest.raises(ParityError, match=r"max \|logit difference\| 0\.5") as err:
        check_parity(model, path, images())
    assert isinstance(err.value, UserError)  # the CLI shows it as one line, exit 2
    assert err.value.report.max_abs_diff == pytest.approx(0.5, abs=1e-4)


def test_tolerance_grows_with_each_images_logits(tmp_path):
    """Float32 rounding is relative: logits of order 1e4 may differ by more than atol, not by
    more than atol × their size; one image's large logits do not loosen another's check."""
    model = make_model("g_ghost_regnetx_tiny")
    with torch.no_grad():
        model.fc.weight *= 1e4
        model.fc.bias.fill_(2e4)
    path = export_onnx(model, 32, tmp_path / "m.onnx")
    report = check_parity(model, path, images())
    assert report.ok and report.max_abs_diff > 1e-4 and report.max_scaled_diff < 1e-6
    with torch.no_grad():
        model.fc.bias[0] += 3 * 1e-4 * 3e4  # three tolerances off for logits of about 2e4
    with pytest.raises(ParityError, match="of the image's largest"):
        check_parity(model, path, images())


def test_non_finite_logits_are_named_by_side(tmp_path):
    model = make_model("g_ghost_regnetx_tiny")
    path = export_onnx(model, 32, tmp_path / "m.onnx")
    with torch.no_grad():
        model.fc.bias[0] = float("nan")  # PyTorch's logits of class 0 only
    n = images().shape[0]
    with pytest.raises(ParityError, match=rf"non-finite logits: PyTorch {n} of \d+, ONNX Runtime 0 of"):
        check_parity(model, path, images())


def test_top1_disagreement_fails_even_within_atol(tmp_path, monkeypatch):
    model = make_model("g_ghost_regnetx_tiny")
    path = export_onnx(model, 32, tmp_path / "m.onnx")
    real_session = deploy_onnx.cpu_session

    class ReversedLogits:
        """ONNX Runtime whose logits come out in reverse class order."""

        def __init__(self, *args, **kwargs):
            self._session = real_session(*args, **kwargs)

        def run(self, names, feed):
            return [out[:, ::-1].copy() for out in self._session.run(names, feed)]

    monkeypatch.setattr(deploy_onnx, "cpu_session", ReversedLogits)
    with pytest.raises(ParityError, match="top-1 agreement") as err:
        check_parity(model, path, images(), atol=1e6)
    assert err.value.report.top1_agree < 1.0


def test_export_run_on_its_test_split(trained_run):
    run_path, _ = trained_run
    report = export_run(run_path)
    assert report.path == run_path / "model.onnx" and report.path.is_file()
    row = report.to_dict()
    json.dumps(row)
    assert row["size_bytes"] == report.path.stat().st_size
    assert row["max_scaled_diff"] <= 1e-5 and row["top1_agree"] == 1.0 and row["opset"] == 17
    test_files = json.loads(RunDir(run_path).split_path.read_text())["test"]
    assert row["n_images"] == min(64, len(test_files))
    assert row["batch_sizes"] == [1, row["n_images"]]
    assert row["parity_images"].startswith("test split of")
    assert not [p for p in run_path.iterdir() if p.name.startswith(".onnx-export-")]
    meta = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    config = RunDir(run_path).load_config()
    assert json.loads(meta["class_names"]) == config.class_names
    assert json.loads(meta["mean"]) == config.mean and meta["img_size"] == "16"


def test_export_run_checks_the_logits_of_the_run_on_its_images(trained_run, tmp_path):
    """The exported file, fed the same normalised test images, gives the run's own logits."""
    run_path, _ = trained_run
    report = export_run(run_path, out=tmp_path / "copy.onnx", n_images=3)
    assert report.path == tmp_path / "copy.onnx" and report.to_dict()["n_images"] == 3
    model, config = RunDir(run_path).load_model()
    imgs, _ = deploy_onnx.parity_images(RunDir(run_path), config, 3)
    assert imgs.shape == (3, 3, 16, 16)
    assert abs(float(imgs.mean())) < 5  # normalised, not raw 0-255 pixels
    out = deploy_onnx.cpu_session(report.path).run(None, {"images": imgs.numpy()})[0]
    with torch.inference_mode():
        ref = model(imgs).numpy()
    per_image = np.abs(out - ref).max(axis=1) / np.maximum(1.0, np.abs(ref).max(axis=1))
    assert (per_image <= 1e-5).all()


def test_missing_data_folder_is_a_user_error_unless_parity_data(trained_run, tmp_path):
    run_path, data = trained_run
    moved = shutil.copytree(run_path, tmp_path / "run")
    config = json.loads((moved / "config.json").read_text())
    config["data"]["path"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    (moved / "model.onnx").unlink(missing_ok=True)
    with pytest.raises(UserError, match=r"gone is not there.*--parity-data"):
        export_run(moved)
    assert not (moved / "model.onnx").exists()
    report = export_run(moved, parity_data=data, n_images=7)
    assert report.to_dict()["n_images"] == 7 and report.path == moved / "model.onnx"
    assert report.parity_images == f"images of {data}"


def test_parity_data_with_unknown_classes_is_a_user_error(trained_run, tmp_path):
    run_path, _ = trained_run
    other = make_image_folder(tmp_path / "other", {"not_a_class": 2}, size=20)
    with pytest.raises(UserError, match="not_a_class"):
        export_run(run_path, out=tmp_path / "x.onnx", parity_data=other)
    assert not (tmp_path / "x.onnx").exists()


def test_export_out_that_would_destroy_something_is_refused(trained_run, tmp_path, capsys):
    """Another run's files, an existing file, a folder, a wrong suffix: refused with one line
    before anything is written (plain and --int8); --overwrite replaces a file, never another run's."""
    from rscompress.cli import main

    other, _ = trained_run  # a finished run
    run = shutil.copytree(other, tmp_path / "run", ignore=shutil.ignore_patterns("*.onnx", "int8.jsonl"))
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    mine, folder = tmp_path / "mine.onnx", tmp_path / "folder.onnx"
    mine.write_bytes(b"someone's file")
    folder.mkdir()

    def refused(*args: str) -> str:
        assert main(["export", str(run), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        return err

    for int8 in ([], ["--int8"]):
        for overwrite in ([], ["--overwrite"]):
            for target in (other / "model.onnx", other / "model.int8.onnx", other / "sub" / "x.onnx"):
                assert "another run dir" in refused("--out", str(target), *int8, *overwrite)
        assert "must end in .onnx" in refused("--out", str(other / "model.safetensors"), *int8, "--overwrite")
        assert "must end in .onnx" in refused("--out", str(tmp_path / "model.pt"), *int8)
        assert "is a folder" in refused("--out", str(folder), *int8, "--overwrite")
        assert "mine.onnx exists; pass --overwrite" in refused("--out", str(mine), *int8)
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before
    assert mine.read_bytes() == b"someone's file" and not (other / "sub").exists()
    assert not (run / "int8.jsonl").exists()  # refused before any check ran

    # The run's own default path: a first export writes it, a second needs --overwrite.
    assert main(["export", str(run), "--parity-images", "3", "--json"]) == 0
    first = (run / "model.onnx").read_bytes()
    assert "model.onnx exists; pass --overwrite" in refused("--parity-images", "3")
    assert (run / "model.onnx").read_bytes() == first
    assert main(["export", str(run), "--parity-images", "3", "--overwrite", "--json"]) == 0
    assert main(["export", str(run), "--out", str(mine), "--parity-images", "3", "--overwrite", "--json"]) == 0
    assert mine.read_bytes() != b"someone's file"
