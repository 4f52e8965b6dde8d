"""``rscompress demo``: the whole flow, here on tiny fake data with 1-epoch steps."""

from pathlib import Path

from rscompress import demo
from rscompress.cli import main
from tests.fakes import make_fake_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_sample_is_the_full_ucmerced_copy():
    sample = demo.bundled_sample()
    assert sample == ROOT / "sample" / "ucmerced128"
    assert len(list(sample.glob("*/*.jpg"))) == 2100


def test_demo_runs_every_step_and_writes_the_report(tmp_path, monkeypatch, capsys):
    data = make_fake_dataset(tmp_path, name="ucmerced", per_class=4, size=20)
    monkeypatch.setattr(demo, "bundled_sample", lambda: data)
    monkeypatch.setattr(demo, "DEMO_EPOCHS", 1)
    monkeypatch.setattr(demo, "DEMO_FINETUNE_EPOCHS", 1)
    # One epoch on 84 fake images: INT8 may move a val image or two, far past 1 point of 21.
    monkeypatch.setattr(demo, "DEMO_INT8", {"force": True, "repeats": 5})
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for step in ("base", "rt15", "ggnet-dkd", "rt15-onnx", "rt15-int8", "ggnet-onnx"):
        assert step in printed
    assert "INT8 rt15 vs the FP32 parent at batch 1, 1 thread: " in printed
    assert f"report: {(out / 'report.html').resolve()}" in printed
    assert (out / "rt15" / "model.onnx").is_file() and (out / "ggnet-dkd" / "model.onnx").is_file()
    assert (out / "rt15" / "model.int8.onnx").is_file() and (out / "rt15" / "int8.jsonl").is_file()
    assert (out / "report.html").stat().st_size > 10_000
