"""``rscompress export`` and ``bench`` on tiny run dirs."""

import json

import onnx

from rscompress import api
from rscompress.cli import main
from rscompress.config import DataConfig, FitConfig, PruneConfig, TrainConfig
from tests.fakes import make_fake_dataset


def test_export_then_bench_parent_and_pruned(tmp_path, capsys):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=6, size=20)
    base, small = tmp_path / "base", tmp_path / "small"
    api.train(
        DataConfig(path=data, img_size=16), TrainConfig(model="resnet18", epochs=1, batch_size=8), base, quiet=True
    )
    api.prune(
        base, PruneConfig(method="l1", target_macs=0.3, finetune=FitConfig(epochs=1, batch_size=8)), small, quiet=True
    )

    assert main(["export", str(small), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_scaled_diff"] <= 1e-5 and report["top1_agree"] == 1.0
    onnx.checker.check_model(str(small / "model.onnx"))

    args = [
        "bench",
        str(base),
        str(small),
        "--batch-size",
        "1",
        "--threads",
        "1",
        "--engine",
        "onnxruntime",
        "--warmup",
        "1",
        "--repeats",
        "3",
        "--json",
    ]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    by_model = {r["model"]: r for r in rows}
    assert len(rows) == 2
    pruned_row = next(r for r in rows if r["macs_ratio"] != 1.0)
    assert pruned_row["macs_ratio"] > 3  # the parent is the reference: about 1 / 0.3
    assert all(r["median_ms"] > 0 for r in by_model.values())

    # The table, piped (as here): every cell whole, however wide, not squeezed into 80 columns.
    assert main(args[:-1]) == 0
    out = capsys.readouterr().out
    assert str(small) in out and str(base) in out and "…" not in out
    assert "macs_ratio" in out and "speedup" in out


def test_export_rejects_unknown_format(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "tflite"]) == 2
    assert "--format" in capsys.readouterr().err
