import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_sample.py"


@pytest.fixture(scope="module")
def build_sample():
    spec = importlib.util.spec_from_file_location("build_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_source(root):
    rows = ["relative_path\tclass\twidth\theight\tsha256"]
    for cls in ("beach", "forest"):
        for i in range(2):
            path = root / cls / f"{cls}{i:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng([i, len(cls)]).integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=95)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            rows.append(f"{cls}/{path.name}\t{cls}\t36\t40\t{digest}")
    (root / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_builds_deterministic_sample(tmp_path, build_sample):
    source = fake_source(tmp_path / "src")
    total = build_sample.build(source, tmp_path / "out", 16, 85, "cmd")
    manifest = (tmp_path / "out" / "MANIFEST.tsv").read_text().splitlines()
    assert manifest[0] == "relative_path\tclass\twidth\theight\tsha256" and len(manifest) == 5
    for line in manifest[1:]:
        rel, _, w, h, digest = line.split("\t")
        data = (tmp_path / "out" / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest and (w, h) == ("16", "16")
        assert Image.open(tmp_path / "out" / rel).size == (16, 16)
    assert total == sum(p.stat().st_size for p in (tmp_path / "out").rglob("*.jpg"))
    assert "Yang" in (tmp_path / "out" / "README.md").read_text()
    first = (tmp_path / "out" / "MANIFEST.tsv").read_bytes()
    build_sample.build(source, tmp_path / "out", 16, 85, "cmd")
    assert (tmp_path / "out" / "MANIFEST.tsv").read_bytes() == first


def test_refuses_sources_that_fail_their_checksum(tmp_path, build_sample):
    source = fake_source(tmp_path / "src")
    (source / "beach" / "beach00.jpg").write_bytes(b"changed")
    with pytest.raises(SystemExit, match=r"beach00\.jpg: sha256 differs"):
        build_sample.build(source, tmp_path / "out", 16, 85, "cmd")
    assert not (tmp_path / "out").exists()
