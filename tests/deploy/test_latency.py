"""Latency: models timed interleaved per setting, speedup next to MACs ratio, memory per model in
its own process. Timings are never asserted in absolute terms."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rscompress.deploy import latency, rss
from rscompress.deploy.latency import (
    LatencyResult,
    bench_table,
    measure,
    record_fields,
    time_interleaved,
)
from rscompress.deploy.onnx import export_onnx
from rscompress.errors import UserError
from tests.deploy.helpers import make_model, make_run


class Recorder(nn.Module):
    """Wraps a model and logs its name for each forward run under ``inference_mode``."""

    def __init__(self, name: str, model: nn.Module, log: list[str]):
        super().__init__()
        self.name, self.model, self.log = name, model, log

    def forward(self, x):
        if torch.is_inference_mode_enabled():
            self.log.append(self.name)
        return self.model(x)


def test_time_interleaved_order_and_milliseconds():
    log: list[str] = []
    ticks = iter(range(100))

    def clock() -> float:
        return float(next(ticks))  # one second per tick: each timed call lasts 1 s

    times = time_interleaved([lambda: log.append("a"), lambda: log.append("b")], 2, 3, clock)
    assert log == ["a", "b"] * 5  # warm-up interleaved too
    assert times == [[1000.0] * 3, [1000.0] * 3]


def test_torch_models_timed_interleaved_in_inference_mode_threads_restored():
    log: list[str] = []
    models = [(n, Recorder(n, make_model("g_ghost_regnetx_tiny", 16), log), 16) for n in ("a", "b")]
    torch.set_num_threads(2)  # the caller's setting; measured at 1 thread (2 is slow on a busy CI box)
    try:
        results = measure(
            models, batch_sizes=(1, 2), threads=(1,), engines=("torch",), warmup=2, repeats=3, peak_rss=False
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert log == ["a", "b"] * (2 + 3) * 2  # per batch size: warm-up, then repeats, A B A B
    assert [(r.name, r.batch_size, r.threads) for r in results] == [
        ("a", 1, 1),
        ("b", 1, 1),
        ("a", 2, 1),
        ("b", 2, 1),
    ]
    for r in results:
        assert r.reference == "a" and not r.reference_is_parent
        assert r.repeats == 3 and r.warmup == 2 and r.run is None
        assert 0 < r.median_ms <= r.p90_ms
        assert "peak_rss_mb" not in r.to_dict()  # not measured: left out, not faked


def test_pruned_resnet18_vs_parent_both_engines():
    parent, pruned = make_model("resnet18"), make_model("pruned_resnet18")
    results = measure(
        [("parent", parent, 32), ("pruned", pruned, 32)],
        batch_sizes=(1, 32),
        threads=(1,),
        warmup=2,
        repeats=5,
        peak_rss=False,
    )
    assert [(r.engine, r.batch_size) for r in results[::2]] == [
        ("torch", 1),
        ("torch", 32),
        ("onnxruntime", 1),
        ("onnxruntime", 32),
    ]
    by = {(r.name, r.engine, r.batch_size): r for r in results}
    for engine in ("torch", "onnxruntime"):
        for bs in (1, 32):
            p, q = by["parent", engine, bs], by["pruned", engine, bs]
            assert p.speedup == 1.0 and p.macs_ratio == 1.0
            assert q.ref_median_ms == p.median_ms and q.speedup == p.median_ms / q.median_ms
            assert q.macs_ratio == p.macs / q.macs > 2.5  # half the channels: ~1/4 of the MACs
        # ~3.5x fewer MACs at batch 32 is far outside timing noise of interleaved medians
        assert by["pruned", engine, 32].speedup > 1.0
    json.dumps([r.to_dict() for r in results])


def test_parent_run_is_the_reference_and_memory_is_probed_per_model(tmp_path, monkeypatch):
    parent = make_run(tmp_path / "parent", seed=0)
    child = make_run(tmp_path / "child", parent=tmp_path / "parent", seed=1)
    other = make_run(tmp_path / "other", seed=2)
    model, _ = child.load_model()
    export_onnx(model, 16, child.path / "model.onnx")  # a run's own file is used, not re-exported
    exported: list[int] = []

    def recording_export(model, img_size, path, *args, **kwargs):
        exported.append(img_size)
        return export_onnx(model, img_size, path, *args, **kwargs)

    monkeypatch.setattr(latency, "export_onnx", recording_export)
    results = measure(
        [other, child, parent.path],
        batch_sizes=(1,),
        threads=(1,),
        engines=("onnxruntime",),
        warmup=1,
        repeats=2,
    )
    assert len(exported) == 2
    refs = {r.name: r.reference for r in results}
    other_, child_, parent_ = (str(r.path) for r in (other, child, parent))
    assert refs == {other_: other_, child_: parent_, parent_: other_}  # parent if present, else first
    assert [r.reference_is_parent for r in results] == [False, True, False]
    for r in results:
        assert r.run == r.name and r.peak_rss_mb is not None and r.peak_rss_mb > 10
        # The probe's own peak (no torch in it), not this big process's, which it was forked from.
        assert r.peak_rss_mb < rss.peak_rss_mb()
    fields = record_fields(results, str(child.path))
    assert fields == {"latency_ms_bs1": results[1].median_ms, "parent_latency_ms_bs1": results[2].median_ms}
    assert record_fields(results, str(other.path)) == {"latency_ms_bs1": results[0].median_ms}


def test_torch_memory_probe_reports_peak_above_import_floor(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    rss.main(["--engine", "torch", "--run", str(run.path), "--batch-size", "2"])
    out = json.loads(capsys.readouterr().out)
    assert out["peak_rss_mb"] >= out["import_rss_mb"] > 0


def test_bench_table_rows_and_to_dict():
    base = dict(
        engine="onnxruntime",
        batch_size=1,
        threads=1,
        p90_ms=3.0,
        warmup=10,
        repeats=50,
        img_size=64,
        params=1000,
        reference="parent",
        reference_is_parent=True,
        ref_median_ms=4.0,
        ref_macs=8_000_000,
    )
    results = [
        LatencyResult(name="parent", median_ms=4.0, macs=8_000_000, peak_rss_mb=120.04, **base),
        LatencyResult(name="pruned", median_ms=2.0, macs=2_000_000, **base),
    ]
    rows = bench_table(results)
    assert len(rows) == 2
    assert rows[1] == {
        "model": "pruned",
        "precision": "fp32",
        "engine": "onnxruntime",
        "batch_size": 1,
        "threads": 1,
        "median_ms": 2.0,
        "p90_ms": 3.0,
        "images_per_s": 500.0,
        "mmacs": 2.0,
        "reference": "parent",
        "speedup": 2.0,
        "macs_ratio": 4.0,
    }
    assert rows[0]["peak_rss_mb"] == 120.0
    d = results[1].to_dict()
    assert d["speedup"] == 2.0 and d["macs_ratio"] == 4.0 and "peak_rss_mb" not in d and "run" not in d
    with pytest.raises(ValueError, match="batch 1"):
        record_fields(results, "missing")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"engines": ("tensorrt",)}, "unknown engine 'tensorrt'"),
        ({"batch_sizes": (0,)}, "batch size must be 1 to 65536, got 0"),
        ({"repeats": 0}, "need repeats of 1 to 100000"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        measure([("a", nn.Linear(1, 1), 16)], **kwargs)


def test_same_model_twice_is_a_user_error(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(UserError, match="given twice"):
        measure([run.path, run], engines=("torch",), peak_rss=False)
