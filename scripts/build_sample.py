"""Build the bundled UC Merced sample: every image as a SIZE×SIZE JPEG, plus MANIFEST and README.

    python scripts/build_sample.py [SOURCE] [--out sample/ucmerced128] [--size 128] [--quality 85]

SOURCE is a UC Merced copy with a MANIFEST.tsv (relative_path, class, width, height, sha256);
default ../shared/data/ucmerced relative to the repository root. Every source file is checked
against its sha256 before anything is written. The output is deterministic for a given Pillow
version: same source, same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["relative_path", "class", "width", "height", "sha256"]


def read_manifest(source: Path) -> list[dict[str, str]]:
    lines = (source / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != COLUMNS:
        raise SystemExit(f"{source / 'MANIFEST.tsv'}: expected header {' '.join(COLUMNS)}")
    return [dict(zip(COLUMNS, line.split("\t"), strict=True)) for line in lines[1:] if line]


def verify_sources(source: Path, rows: list[dict[str, str]]) -> None:
    bad = []
    for row in rows:
        path = source / row["relative_path"]
        if not path.is_file():
            bad.append(f"{path}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
            bad.append(f"{path}: sha256 differs from MANIFEST.tsv")
    if bad:
        raise SystemExit(f"{len(bad)} source file(s) failed verification:\n" + "\n".join(bad))


def encode(path: Path, size: int, quality: int) -> bytes:
    with Image.open(path) as im:
        small = im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    # optimize: smaller Huffman tables, still deterministic. Pillow's default 4:2:0 subsampling.
    small.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def readme(command: str, rows: list[dict[str, str]], total_bytes: int, size: int, quality: int) -> str:
    counts = Counter(row["class"] for row in rows)
    table = "\n".join(f"| {name} | {n} |" for name, n in sorted(counts.items()))
    return f"""# UC Merced Land Use, {size}×{size} sample

All {len(rows)} images of the UC Merced Land Use dataset ({len(counts)} classes), resized to
{size}×{size} px for the rscompress demo and tests. {total_bytes} bytes of JPEG in total.

**Citation:** Yi Yang and Shawn Newsam, "Bag-of-visual-words and spatial extensions for
land-use classification", Proc. 18th ACM SIGSPATIAL International Conference on Advances in
Geographic Information Systems (ACM GIS), 2010.
Dataset home page: http://weegee.vision.ucmerced.edu/datasets/landuse.html

## Terms (as far as known)

The dataset page describes the images as manually extracted from the USGS National Map Urban
Area Imagery collection, which it calls public domain, and asks users to cite the paper above.
A common attribution for the imagery is "Map services and data available from U.S. Geological
Survey, National Geospatial Program." The source copy used here came without a licence file;
see its README for provenance. Nothing here was checked against the dataset page online.

## How it was built

From the repository root:

    {command}

- Source: a JPEG (quality 95) copy of the original 256×256 TIFFs, every file checked against
  the sha256 in its MANIFEST.tsv first.
- Each image: converted to RGB, resized to {size}×{size} with Pillow's LANCZOS filter (the 44
  images that are not exactly 256×256 are squashed, not cropped), saved as JPEG quality
  {quality}, optimised Huffman tables, 4:2:0 chroma subsampling. File names are kept, with a
  `.jpg` extension.
- Deterministic: the same source and Pillow version give the same bytes.
- `MANIFEST.tsv`: `relative_path<TAB>class<TAB>width<TAB>height<TAB>sha256` of the files here
  (header, then rows sorted by path).

## Known anomaly

`airplane/airplane01.jpg` and `airplane/airplane02.jpg` are identical, as in the original
dataset. rscompress keeps such exact duplicates on the same side of every split.

## Contents

| class | images |
|---|---|
{table}
"""


def build(source: Path, out: Path, size: int, quality: int, command: str) -> int:
    """Write the sample to ``out`` (replacing it); returns the total JPEG bytes."""
    rows = read_manifest(source)
    verify_sources(source, rows)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = ["\t".join(COLUMNS)]
    total = 0
    for row in sorted(rows, key=lambda r: r["relative_path"]):
        rel = Path(row["relative_path"]).with_suffix(".jpg").as_posix()
        data = encode(source / row["relative_path"], size, quality)
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
        total += len(data)
        manifest.append("\t".join([rel, row["class"], str(size), str(size), hashlib.sha256(data).hexdigest()]))
    (tmp / "MANIFEST.tsv").write_text("\n".join(manifest) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(readme(command, rows, total, size, quality), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "source",
        nargs="?",
        default="../shared/data/ucmerced",
        help="UC Merced folder with MANIFEST.tsv (relative to the repo root)",
    )
    parser.add_argument("--out", default="sample/ucmerced128", help="output folder (relative to the repo root)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--quality", type=int, default=85)
    args = parser.parse_args(argv)
    command = (
        f"python scripts/build_sample.py {args.source} --out {args.out} --size {args.size} --quality {args.quality}"
    )
    total = build(REPO / args.source, REPO / args.out, args.size, args.quality, command)
    print(f"wrote {REPO / args.out}: {total / 1e6:.1f} MB of JPEG")
    return 0


if __name__ == "__main__":
    sys.exit(main())
