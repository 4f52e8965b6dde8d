"""``rscompress report``: self-contained HTML + markdown twin; plots render in a real browser."""

import base64
import re
import shutil
import subprocess

import pytest

from rscompress import api
from rscompress.cli import main
from rscompress.config import DataConfig, FitConfig, PruneConfig, TrainConfig
from tests.fakes import make_fake_dataset


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = make_fake_dataset(root, name="rsscn7", per_class=6, size=20)
    base, small = root / "base", root / "small"
    api.train(
        DataConfig(path=data, img_size=16), TrainConfig(model="resnet18", epochs=1, batch_size=8), base, quiet=True
    )
    api.prune(
        base, PruneConfig(method="l1", target_macs=0.3, finetune=FitConfig(epochs=1, batch_size=8)), small, quiet=True
    )
    out = root / "out" / "report.html"
    assert main(["report", str(base), str(small), "--out", str(out), "--repeats", "3"]) == 0
    return out


def test_html_is_self_contained_with_all_plots(report):
    page = report.read_text()
    assert "http://" not in page and "https://" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4  # Pareto MACs, Pareto latency, per-class, confusion
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    for column in ("top1 (%)", "kappa", "MMACs", "params (M)", "MACs kept", "latency bs1 (ms)", "parent"):
        assert column in page
    md = report.with_suffix(".md").read_text()
    assert md.count("![") == 4 and "| base |" in md and "| small |" in md
    assert all(
        (report.parent / "report_files" / f"{k}.png").is_file()
        for k in ("pareto_macs", "pareto_latency", "per_class", "confusion")
    )


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (.ci/run installs it)")
def test_plots_render_in_headless_chromium(report, tmp_path):
    # Every <img> must have decoded to a real picture: naturalWidth > 0.
    probe = report.parent / "probe.html"
    probe.write_text(
        report.read_text().replace(
            "</body>",
            "<script>window.onload=()=>{const ok=[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length;"
            "document.title='rendered:'+ok+'/'+document.images.length;}</script></body>",
        )
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [_chromium(), *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "<title>rendered:4/4</title>" in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,1600", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000
