"""INT8 export: a checked QDQ file is written and runs; a val drop past --max-drop is refused
(nothing written) unless --force; every check is recorded; bad options are one clear error;
INT8 slower than FP32 is said plainly. Timings are never asserted."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

import rscompress as rsc
from rscompress.cli import main
from rscompress.config import Int8Config
from rscompress.deploy import int8 as deploy_int8
from rscompress.deploy.cpu import CpuInfo, cpu_info
from rscompress.deploy.int8 import Int8AccuracyError, LatencyPair, SplitCheck, export_int8_run
from rscompress.deploy.onnx import export_run
from rscompress.deploy.runtime import cpu_session
from rscompress.errors import UserError
from tests.deploy.helpers import NUM_CLASSES, make_model

FAST = Int8Config(calib_images=8, repeats=2)
FAST_FLAGS = ["--calib-images", "8", "--repeats", "2"]


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the trained run: INT8 exports write into the run dir."""
    run_path, _ = trained_run
    return shutil.copytree(run_path, tmp_path / "run", ignore=shutil.ignore_patterns("model.onnx", "int8.jsonl"))


def records(run):
    return [json.loads(line) for line in (run / "int8.jsonl").read_text().splitlines()]


def no_staging_left(folder):
    return not [p for p in folder.iterdir() if p.name.startswith((".int8-", ".model"))]


def drop_of(points: int):
    """compare_on as if INT8 got ``points`` of 100 images fewer right than FP32."""

    def compare(_fp32, _int8, batches):
        return SplitCheck(n_images=100, correct_fp32=90, correct_int8=90 - points, agree=100 - points)

    return compare


def test_int8_file_is_written_runs_and_is_recorded(run_copy):
    export_run(run_copy)  # the FP32 model.onnx must come through untouched
    fp32_before = (run_copy / "model.onnx").read_bytes()

    report = export_int8_run(run_copy, cfg=FAST)

    dest = run_copy / "model.int8.onnx"
    assert report.written and report.path == dest and dest.is_file()
    assert (run_copy / "model.onnx").read_bytes() == fp32_before
    assert no_staging_left(run_copy)
    proto = onnx.load(str(dest))
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0  # QDQ
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == json.loads((run_copy / "config.json").read_text())["class_names"]
    assert "QDQ" in meta["quantization"] and "per channel" in meta["quantization"]

    split = json.loads((run_copy / "split.json").read_text())
    assert report.val.n_images == len(split["val"]) and report.test is not None
    assert report.test.n_images == len(split["test"])
    assert 0 <= report.val.agreement <= 1 and report.calib_images == 8
    assert report.size_bytes_int8 == dest.stat().st_size < report.size_bytes_fp32
    assert report.latency.fp32_median_ms > 0 and report.latency.int8_median_ms > 0

    (row,) = records(run_copy)
    assert row["written"] and not row["refused"] and row["path"] == str(dest)
    assert {"top1_fp32", "top1_int8", "latency_ms_bs1_fp32", "latency_ms_bs1_int8", "cpu", "cpu_flags"} <= row.keys()
    assert row["val"]["n_images"] == len(split["val"]) and row["calib_images"] == 8

    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16), dtype=np.float32)
    classes = len(json.loads(meta["class_names"]))
    assert cpu_session(dest).run(None, {"images": x})[0].shape == (3, classes)  # dynamic batch kept


def test_a_drop_past_max_drop_is_refused_recorded_and_leaves_no_file(run_copy, monkeypatch):
    monkeypatch.setattr(deploy_int8, "compare_on", drop_of(3))
    dest = run_copy / "model.int8.onnx"
    with pytest.raises(Int8AccuracyError) as err:
        export_int8_run(run_copy, cfg=FAST)
    message = str(err.value)
    assert isinstance(err.value, UserError)  # one line on stderr from the CLI
    assert "val top-1 90.00% FP32 -> 87.00% INT8" in message and "drop of 3.00 points > --max-drop 1" in message
    assert "--force" in message and str(run_copy / "int8.jsonl") in message
    assert not dest.exists() and no_staging_left(run_copy)
    assert not err.value.report.written

    (row,) = records(run_copy)  # the refused check is recorded, numbers and all
    assert row["refused"] and not row["written"] and row["val_drop_points"] == pytest.approx(3.0)
    assert row["val"]["top1_int8"] == pytest.approx(0.87)

    # A drop of exactly max_drop passes; a looser --max-drop lets this one through.
    assert export_int8_run(run_copy, run_copy / "a.onnx", Int8Config(calib_images=8, repeats=2, max_drop=3)).written


def test_a_refused_model_leaves_the_file_already_there(run_copy, monkeypatch):
    dest = run_copy / "model.int8.onnx"
    dest.write_bytes(b"an earlier INT8 export")
    monkeypatch.setattr(deploy_int8, "compare_on", drop_of(5))
    with pytest.raises(Int8AccuracyError, match="left as it was"):
        export_int8_run(run_copy, cfg=FAST, overwrite=True)
    assert dest.read_bytes() == b"an earlier INT8 export"


def test_force_writes_past_max_drop_and_says_so(run_copy, monkeypatch):
    monkeypatch.setattr(deploy_int8, "compare_on", drop_of(5))
    report = export_int8_run(run_copy, cfg=Int8Config(calib_images=8, repeats=2, force=True))
    assert report.written and (run_copy / "model.int8.onnx").is_file()
    assert any("because of --force" in note for note in report.notes)
    (row,) = records(run_copy)
    assert row["written"] and row["forced"] and row["val_drop_points"] == pytest.approx(5.0)


def test_cli_int8_export_prints_the_comparison(run_copy, capsys):
    assert main(["export", str(run_copy), "--format", "onnx", "--int8", *FAST_FLAGS]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run_copy / 'model.int8.onnx'}" in out
    assert "val  top-1: FP32" in out and "test top-1: FP32" in out and "agrees with FP32" in out
    assert "batch-1 latency, 1 thread(s)" in out and "CPU: " in out and "int8.jsonl" in out
    assert not (run_copy / "model.onnx").exists()  # --int8 writes the INT8 file only

    assert main(["export", str(run_copy), "--int8", "--out", str(run_copy / "b.onnx"), *FAST_FLAGS, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["path"] == str(run_copy / "b.onnx") and row["written"]
    assert len(records(run_copy)) == 2


def test_cli_refuses_past_max_drop_unless_force(run_copy, capsys, monkeypatch):
    monkeypatch.setattr(deploy_int8, "compare_on", drop_of(2))
    assert main(["export", str(run_copy), "--int8", *FAST_FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: INT8 model refused") and "drop of 2.00 points" in err and err.count("\n") == 1
    assert not (run_copy / "model.int8.onnx").exists()

    assert main(["export", str(run_copy), "--int8", *FAST_FLAGS, "--force"]) == 0
    assert "note: written past --max-drop 1 because of --force" in capsys.readouterr().out
    assert (run_copy / "model.int8.onnx").is_file()
    assert [r["written"] for r in records(run_copy)] == [False, True]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--int8", "--calib-images", "0"], "--calib-images"),
        (["--int8", "--calib-images", "-5"], "--calib-images"),
        (["--int8", "--max-drop", "-1"], "--max-drop"),
        (["--int8", "--max-drop", "nan"], "--max-drop"),
        (["--int8", "--threads", "0"], "--threads"),
        (["--calib-images", "32"], "--calib-images applies only with --int8"),
        (["--force"], "--force applies only with --int8"),
        (["--int8", "--parity-data", "x"], "--parity-data does not apply to --int8"),
    ],
)
def test_bad_int8_options_are_one_clear_error(tmp_path, capsys, flags, named):
    # Checked before the run is opened: the message names the option, not the missing run.
    assert main(["export", str(tmp_path / "no-run"), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1 and "no-run" not in err


def test_slower_int8_is_said_plainly(run_copy, monkeypatch, capsys):
    slow = LatencyPair(fp32_median_ms=2.0, fp32_p90_ms=2.2, int8_median_ms=3.0, int8_p90_ms=3.3, threads=1, repeats=2)
    monkeypatch.setattr(deploy_int8, "latency_bs1", lambda *args: slow)
    monkeypatch.setattr(deploy_int8, "cpu_info", lambda: CpuInfo("Old Xeon", ("avx2", "avx512f"), True))
    assert main(["export", str(run_copy), "--int8", *FAST_FLAGS]) == 0
    out = capsys.readouterr().out
    assert "INT8 SLOWER: 1.50x the FP32 time" in out
    assert "note: INT8 is slower than FP32 on this CPU: 3 ms vs 2 ms" in out
    assert "no VNNI (avx512_vnni / avx_vnni) nor AMX-INT8" in out and "without VNNI" in out
    (row,) = records(run_copy)
    assert row["int8_slower"] and row["cpu"] == "Old Xeon" and row["cpu_flags"] == ["avx2", "avx512f"]


def test_cpu_info_reads_the_int8_flags(tmp_path):
    entry = "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8 sse\n\n"
    (tmp_path / "vnni").write_text(entry + entry.replace("Test CPU", "Other"))
    info = cpu_info(tmp_path / "vnni")
    assert info.name == "Test CPU" and info.flags == ("avx2", "avx512f", "avx512_vnni", "amx_int8")
    assert info.has_vnni and "no VNNI" not in info.describe()
    (tmp_path / "old").write_text("model name\t: Old\nflags\t\t: sse avx\n")
    assert not cpu_info(tmp_path / "old").has_vnni and "no VNNI" in cpu_info(tmp_path / "old").describe()
    assert not cpu_info(tmp_path / "missing").flags_known


def _batches(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % NUM_CLASSES
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, n, 8)]


def test_python_api_export_int8_and_its_refusal(tmp_path, monkeypatch):
    model = make_model("resnet18")
    calibration, val = _batches(16, 0), _batches(16, 1)
    report = rsc.export_int8(
        model,
        tmp_path / "m.int8.onnx",
        example_input=torch.zeros(1, 3, 32, 32),
        calibration=calibration,
        val_loader=val,
        calib_images=12,
        repeats=2,
    )
    assert report.written and (tmp_path / "m.int8.onnx").is_file() and report.calib_images == 12
    assert report.test is None and report.val.n_images == 16
    assert (tmp_path / "int8.jsonl").is_file()  # recorded beside the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.jsonl", "m.int8.onnx"]

    monkeypatch.setattr(deploy_int8, "compare_on", drop_of(4))
    with pytest.raises(Int8AccuracyError, match=r"drop of 4\.00 points"):
        rsc.export_int8(
            model,
            tmp_path / "r.int8.onnx",
            example_input=torch.zeros(1, 3, 32, 32),
            calibration=calibration,
            val_loader=val,
            calib_images=8,
            repeats=2,
        )
    assert not (tmp_path / "r.int8.onnx").exists()
    assert [r["written"] for r in map(json.loads, (tmp_path / "int8.jsonl").read_text().splitlines())] == [True, False]
    with pytest.raises(UserError, match="max_drop"):
        rsc.export_int8(
            model,
            tmp_path / "x.onnx",
            example_input=torch.zeros(1, 3, 32, 32),
            calibration=calibration,
            val_loader=val,
            max_drop=-2,
        )


def test_bench_times_the_int8_model_beside_fp32_against_the_same_reference(run_copy):
    from rscompress.deploy.latency import measure

    with pytest.raises(UserError, match="none of these runs has an INT8 model"):
        measure([run_copy], batch_sizes=(1,), threads=(1,), warmup=0, repeats=1, peak_rss=False, int8=True)
    report = export_int8_run(run_copy, cfg=FAST)
    results = measure([run_copy], batch_sizes=(1,), threads=(1,), warmup=1, repeats=2, peak_rss=False, int8=True)
    rows = {(r.engine, r.precision): r for r in results}
    assert set(rows) == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")}  # torch: no INT8
    fp32, int8 = rows["onnxruntime", "fp32"], rows["onnxruntime", "int8"]
    assert int8.name == f"{run_copy} int8" and int8.reference == fp32.name == str(run_copy)
    assert int8.ref_median_ms == fp32.median_ms and int8.macs == fp32.macs
    assert int8.size_mb is not None and fp32.size_mb is not None and int8.size_mb < fp32.size_mb / 2
    assert (
        int8.top1 == report.test.top1_int8 and fp32.top1 == json.loads((run_copy / "metrics.json").read_text())["top1"]
    )
    assert rows["torch", "fp32"].size_mb is None
    with pytest.raises(UserError, match="add the onnxruntime engine"):
        measure([run_copy], engines=("torch",), batch_sizes=(1,), threads=(1,), repeats=1, peak_rss=False, int8=True)


def test_report_plots_the_int8_model_beside_its_run(run_copy):
    from rscompress.report.report import add_latency, summarise

    summaries = [summarise(run_copy)]
    assert add_latency(summaries, repeats=2) == []  # no INT8 model yet
    report = export_int8_run(run_copy, cfg=FAST)
    (point,) = add_latency(summaries, repeats=2)
    assert report.test is not None and point["score"] == report.test.top1_int8
    assert point["name"] == f"{summaries[0].name} int8" and point["ms"] > 0 and summaries[0].latency_ms is not None
