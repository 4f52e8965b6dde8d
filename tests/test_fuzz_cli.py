"""Keep issue 35 fixed: generated command lines and recipes end in exit 0 or 2, without a
traceback, in at most one stderr line when they fail, changing no file outside their --out; and
a corpus of spoiled files (images, VOC XML, COCO JSON, YOLO labels) that `rscompress data
inspect` lists as bad files or refuses in one line.

Bounded (a few dozen generated cases, tiny data, one epoch) so the suite stays fast; inputs are
drawn so that most fail before anything trains.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rscompress.cli import main
from tests.detection_fakes import make_detection_dataset
from tests.fakes import make_fake_dataset, make_image_folder, write_corrupt_image, write_non_image, write_truncated_jpeg

# The CLI is run in-process: an exception escaping main() is the traceback a user would see.
FUZZ = settings(
    # RSCOMPRESS_FUZZ_EXAMPLES=500 for a longer search than the suite's.
    max_examples=int(os.environ.get("RSCOMPRESS_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible as is
    database=None,  # nothing written into the working tree (.hypothesis/)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under ``root`` (links not followed) by (size, mtime, inode): an
    atomic rewrite changes the inode, an in-place one the size or mtime."""
    found = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_size if path.is_file() else 0, info.st_mtime_ns, info.st_ino)
    return found


# A generated call is tiny (a few images, one epoch): one that runs longer than this is stuck.
CALL_LIMIT_S = 60


class _TooSlow(BaseException):
    """Raised in the call by SIGALRM; a BaseException so no ``except Exception`` swallows it."""


def _call(argv: list[str], cwd: Path) -> tuple[int, str]:
    """(exit code, stderr) of ``rscompress ARGV`` run in ``cwd``; a traceback fails the test, and
    so does a call running past CALL_LIMIT_S."""

    def too_slow(_signum, _frame):
        raise _TooSlow

    err, out = io.StringIO(), io.StringIO()
    before = Path.cwd()
    os.chdir(cwd)
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(CALL_LIMIT_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except SystemExit as exit_:  # what typer raises for --help and the like
        code = exit_.code if isinstance(exit_.code, int) else 0
    except _TooSlow:
        pytest.fail(f"rscompress {' '.join(argv)} ran past {CALL_LIMIT_S} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(before)
    return code, err.getvalue()


def _check(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) <= 1, err
        assert not lines or lines[0].startswith("error: "), err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Read-only inputs every generated command may name: a tiny class-folder dataset, a
    finished run, a file, a folder and a VOC dataset."""
    root = tmp_path_factory.mktemp("fuzz-inputs")
    # Classes of no known dataset: a known one's name prints a warning (a subset) before any
    # failure, and the one-line check is of the error alone.
    data = make_image_folder(root / "classes", {"field": 6, "river": 6, "town": 6})
    run = root / "run"
    code, err = _call(
        ["train", "--data", str(data), "--model", "resnet18", "--img-size", "16", "--epochs", "1",
         "--batch-size", "4", "--lr", "0.01", "--out", str(run), "-q"],
        root,
    )  # fmt: skip
    assert code == 0, err
    (root / "notes.txt").write_text("not a dataset\n")
    (root / "empty").mkdir()
    make_detection_dataset(root, "voc", n_images=3, size=32)
    return root


def _paths(inputs: Path, out: Path) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [str(inputs / "classes"), str(inputs / "run"), str(inputs / "notes.txt"), str(inputs / "empty"),
         str(inputs / "det-voc"), str(inputs / "missing"), str(out / "x"), str(out), "", "-", "."]
    )  # fmt: skip


NUMBERS = st.sampled_from(["0", "-1", "1", "2", "16", "1e6", "1e400", "nan", "inf", "-inf", "", "abc", "0.5",
                           "99999999999999999999999", "-0", "1e-30"])  # fmt: skip
WORDS = st.sampled_from(["resnet18", "mobilenet_v2", "l1", "slim", "kd", "dkd", "cosine", "nope", "lr=0.1",
                         "seed=1", "epochs=0", "1,2", "cpu", "cuda:99", "test", "onnxruntime", "torch", "é",
                         " "])  # fmt: skip
# Per command: (positional arguments, flags with values) of a valid, cheap call; then optional
# flags that take a value and switches. RUN, DATA, OUT, RECIPE stand for the fixture's paths.
VALID = {
    "train": (
        [],
        {
            "--data": "DATA",
            "--model": "resnet18",
            "--img-size": "16",
            "--epochs": "1",
            "--batch-size": "4",
            "--out": "OUT",
        },
    ),
    "prune": (
        ["RUN"],
        {"--method": "l1", "--target-macs": "0.5", "--finetune-epochs": "1", "--batch-size": "4", "--out": "OUT"},
    ),
    "distill": (
        [],
        {"--teacher": "RUN", "--student": "resnet18", "--epochs": "1", "--batch-size": "4", "--out": "OUT"},
    ),
    "evaluate": (["RUN"], {"--split": "test"}),
    "export": (["RUN"], {"--out": "OUT/m.onnx", "--parity-images": "2"}),
    "bench": (
        ["RUN"],
        {"--batch-size": "1", "--threads": "1", "--engine": "onnxruntime", "--warmup": "0", "--repeats": "1"},
    ),
    "run": (["RECIPE"], {}),
    "data inspect": (["DATA"], {}),
}
OPTIONAL = {
    "train": ["--lr", "--seed", "--weight-decay", "--warmup-epochs", "--schedule", "--milestones", "--threads",
              "--device", "--test-data", "--weights", "--override", "--train-fraction", "--cache-dir"],
    "prune": ["--ratio", "--lr", "--sparse-rate", "--round-to", "--override", "--pruned-from", "--loss",
              "--temperature", "--target-latency-ms", "--sparse-epochs"],
    "distill": ["--loss", "--temperature", "--alpha", "--override", "--lr", "--kd-warmup-epochs"],
    "evaluate": ["--data", "--device"],
    "export": ["--parity-data", "--calib-images", "--max-drop", "--format", "--repeats"],
    "bench": ["--engine", "--batch-size"],
    "run": [],
    "data inspect": [],
}  # fmt: skip
SWITCHES = ["--resume", "--json", "-q", "--overwrite", "--int8", "--resplit", "--help", "--unknown-flag", "-z"]


@st.composite
def argv(draw, inputs: Path, out: Path, recipe: Path) -> list[str]:
    """A command line: a valid, cheap call of a subcommand with up to three changes (a value
    made hostile, a flag dropped, a path swapped, an optional flag or a switch added)."""
    command = draw(st.sampled_from(sorted(VALID)))
    stand_in = {"RUN": str(inputs / "run"), "DATA": str(inputs / "classes"), "OUT": str(out / "x"),
                "OUT/m.onnx": str(out / "m.onnx"), "RECIPE": str(recipe)}  # fmt: skip
    positional, flags = VALID[command]
    positional = [stand_in.get(p, p) for p in positional]
    flags = {k: stand_in.get(v, v) for k, v in flags.items()}
    switches: list[str] = []
    hostile = st.one_of(NUMBERS, WORDS, _paths(inputs, out))
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(["value", "drop", "positional", "optional", "switch"]))
        if change == "value" and flags:
            flags[draw(st.sampled_from(sorted(flags)))] = draw(hostile)
        elif change == "drop" and flags:
            flags.pop(draw(st.sampled_from(sorted(flags))))
        elif change == "positional" and positional:
            positional[0] = draw(hostile)
        elif change == "optional" and OPTIONAL[command]:
            flags[draw(st.sampled_from(OPTIONAL[command]))] = draw(hostile)
        else:
            switches.append(draw(st.sampled_from(SWITCHES)))
    return [*command.split(), *positional, *(x for kv in flags.items() for x in kv), *switches]


@contextlib.contextmanager
def _sandbox(inputs: Path, prefix: str) -> Iterator[tuple[Path, Path, Path]]:
    """A fresh folder for one generated example beside the inputs: itself, the ``out`` path it
    offers (not created) and an empty working directory; removed afterwards."""
    sandbox = Path(tempfile.mkdtemp(prefix=prefix, dir=inputs.parent))
    try:
        (sandbox / "cwd").mkdir()
        yield sandbox, sandbox / "out", sandbox / "cwd"
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def test_generated_command_lines(inputs):
    @FUZZ
    @given(data=st.data())
    def check(data):
        with _sandbox(inputs, "fuzz-cli-") as (sandbox, out, cwd):
            out.mkdir()
            recipe = sandbox / "r.yaml"
            train = {"data": {"path": str(inputs / "classes"), "img_size": 16}, "model": "resnet18", "epochs": 1,
                     "batch_size": 4}  # fmt: skip
            recipe.write_text(yaml.safe_dump({"out": str(out / "recipe"), "steps": [{"name": "a", "train": train}]}))
            args = data.draw(argv(inputs, out, recipe))
            before = _snapshot(inputs)
            code, err = _call(args, cwd)
            _check(code, err)
            after = _snapshot(inputs)
            changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
            if args[0] == "export":  # `export RUN` writes RUN/model.onnx (an INT8 one with its record) by design
                changed -= {"run", "run/model.onnx", "run/model.int8.onnx", "run/int8.jsonl"}
            assert not changed, (args, sorted(changed))
            # Nothing in the working directory but what a relative --out names.
            given_out = args[args.index("--out") + 1] if "--out" in args[:-1] else None
            stray = [p.name for p in cwd.iterdir() if given_out is None or not _within(cwd / given_out, p)]
            assert not stray, (args, stray)

    check()


def _within(out: Path, path: Path) -> bool:
    """``path`` is ``out``, inside it, or a folder on the way to it."""
    out, path = Path(os.path.normpath(out)), Path(os.path.normpath(path))
    return out == path or out.is_relative_to(path) or path.is_relative_to(out)


RECIPE_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
              st.sampled_from(["", "base", "resnet18", "l1", "nope", "../..", "/"])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.sampled_from(
        ["name", "train", "prune", "export", "bench", "distill", "run", "parent", "model", "data", "path",
         "epochs", "img_size", "runs", "typo", "method", "target_macs", "out", "steps"]), children, max_size=4)),
    max_leaves=12,
)  # fmt: skip


@st.composite
def recipe(draw, data_path: Path, out: Path) -> object:
    """A recipe: random structures and values, or a valid one with up to two fields spoiled."""
    if draw(st.booleans()):
        return draw(RECIPE_VALUES)
    train = {"data": {"path": str(data_path), "img_size": 16}, "model": "resnet18", "epochs": 1, "batch_size": 4}
    steps = [
        {"name": "base", "train": train},
        {"name": "onnx", "export": {"run": draw(st.sampled_from(["base", "bse", "onnx", "later"])),
                                    "parity_images": 2}},
    ]  # fmt: skip
    doc: dict = {"out": str(out), "steps": steps}
    for _ in range(draw(st.integers(0, 2))):  # none: it runs (one epoch on the tiny data)
        where = draw(st.sampled_from([doc, steps[0], train, steps[1]["export"], train["data"]]))
        key = draw(st.sampled_from([*where.keys(), "typo"]))
        where[key] = draw(RECIPE_VALUES)
    return doc


def test_generated_recipes(inputs):
    @FUZZ
    @given(data=st.data())
    def check(data):
        with _sandbox(inputs, "fuzz-recipe-") as (sandbox, out, cwd):
            path = sandbox / "r.yaml"
            path.write_text(yaml.safe_dump(data.draw(recipe(inputs / "classes", out)), allow_unicode=True))
            before = _snapshot(inputs)
            code, err = _call(["run", str(path), "-q"], cwd)
            _check(code, err)
            assert _snapshot(inputs) == before
            assert not any(cwd.iterdir())

    check()


# -- spoiled files: `rscompress data inspect` lists them or refuses in one line ----------------


def _xml(root: Path) -> Path:
    return root / "Annotations" / "scene0_0.xml"


def _coco(root: Path) -> Path:
    return root / "annotations" / "instances_train.json"


def _edit_coco(edit: Callable[[dict], None]) -> Callable[[Path], str]:
    def spoil(root: Path) -> str:
        doc = json.loads(_coco(root).read_text())
        edit(doc)
        _coco(root).write_text(json.dumps(doc))
        return "annotations/instances_train.json"

    return spoil


def _without_size(root: Path) -> None:
    text = _xml(root).read_text()
    _xml(root).write_text(text[: text.index("<size>")] + text[text.index("</size>") + len("</size>") :])


def _zero_byte(path: Path) -> None:
    path.write_bytes(b"")


def _wrong_magic(path: Path) -> None:
    path.write_bytes(b"GIF89a" + bytes(64))


def _voc_image(root: Path) -> Path:
    return root / "JPEGImages" / "scene0_0.png"


CORRUPT = {
    # VOC
    "voc-xml-garbage": ("voc", lambda r: (_xml(r).write_text("<annotation><object>"), "Annotations/scene0_0.xml")[1]),
    "voc-xml-not-utf8": ("voc", lambda r: (_xml(r).write_bytes(b"\xff\xfe\x00<a"), "Annotations/scene0_0.xml")[1]),
    "voc-xml-folder": ("voc", lambda r: (_xml(r).unlink(), _xml(r).mkdir(), "Annotations/scene0_0.xml")[2]),
    "voc-size-text": ("voc", lambda r: (_xml(r).write_text(_xml(r).read_text().replace("<width>64", "<width>w")),
                                        "Annotations/scene0_0.xml")[1]),
    "voc-image-zero-byte": ("voc", lambda r: (_without_size(r), _zero_byte(_voc_image(r)),
                                              "JPEGImages/scene0_0.png")[2]),
    "voc-image-wrong-magic": ("voc", lambda r: (_without_size(r), _wrong_magic(_voc_image(r)),
                                                "JPEGImages/scene0_0.png")[2]),
    "voc-image-truncated": ("voc", lambda r: (write_truncated_jpeg(_voc_image(r)), "JPEGImages/scene0_0.png")[1]),
    "voc-split-list-not-utf8": ("voc", lambda r: ((r / "ImageSets/Main/train.txt").write_bytes(b"\xff\xfe"),
                                                  "ImageSets/Main/train.txt")[1]),
    # COCO
    "coco-json-garbage": ("coco", lambda r: (_coco(r).write_text("{"), "annotations/instances_train.json")[1]),
    "coco-json-not-utf8": ("coco", lambda r: (_coco(r).write_bytes(b"\xff{}"), "annotations/instances_train.json")[1]),
    "coco-json-list": ("coco", lambda r: (_coco(r).write_text("[]"), "annotations/instances_train.json")[1]),
    "coco-category-no-name": ("coco", _edit_coco(lambda d: d["categories"][0].pop("name"))),
    "coco-categories-text": ("coco", _edit_coco(lambda d: d.update(categories="tank"))),
    "coco-category-id-null": ("coco", _edit_coco(lambda d: d["categories"][0].update(id=None))),
    "coco-annotation-no-bbox": ("coco", _edit_coco(lambda d: d["annotations"][0].pop("bbox"))),
    "coco-bbox-three": ("coco", _edit_coco(lambda d: d["annotations"][0].update(bbox=[1, 2, 3]))),
    "coco-bbox-text": ("coco", _edit_coco(lambda d: d["annotations"][0].update(bbox=["a", "b", "c", "d"]))),
    "coco-image-id-list": ("coco", _edit_coco(lambda d: d["annotations"][0].update(image_id=[1]))),
    "coco-image-no-file-name": ("coco", _edit_coco(lambda d: d["images"][0].pop("file_name"))),
    "coco-width-text": ("coco", _edit_coco(lambda d: d["images"][0].update(width="abc"))),
    "coco-file-name-absolute": ("coco", _edit_coco(lambda d: d["images"][0].update(file_name="/etc/hostname"))),
    "coco-image-zero-byte": ("coco", lambda r: (_edit_coco(lambda d: d["images"][0].pop("width"))(r),
                                                _zero_byte(r / "images" / "scene0_0.png"), "images/scene0_0.png")[2]),
    # YOLO
    "yolo-label-four-values": ("yolo", lambda r: ((r / "labels/train/scene0_0.txt").write_text("0 0.5 0.5 0.1\n"),
                                                  "labels/train/scene0_0.txt")[1]),
    "yolo-label-not-utf8": ("yolo", lambda r: ((r / "labels/train/scene0_0.txt").write_bytes(b"\xff\xfe"),
                                               "labels/train/scene0_0.txt")[1]),
    "yolo-image-zero-byte": ("yolo", lambda r: (_zero_byte(r / "images/train/scene0_0.png"),
                                                "images/train/scene0_0.png")[1]),
    "yolo-image-wrong-magic": ("yolo", lambda r: (_wrong_magic(r / "images/train/scene0_0.png"),
                                                  "images/train/scene0_0.png")[1]),
    "yolo-image-corrupt": ("yolo", lambda r: (write_corrupt_image(r / "images/train/scene0_0.png"),
                                              "images/train/scene0_0.png")[1]),
    "yolo-data-yaml-broken": ("yolo", lambda r: ((r / "data.yaml").write_text("names: [unclosed\n"), "data.yaml")[1]),
    "yolo-data-yaml-list": ("yolo", lambda r: ((r / "data.yaml").write_text("- tank\n"), "data.yaml")[1]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_spoiled_detection_files_are_listed_or_refused(tmp_path, case):
    fmt, spoil = CORRUPT[case]
    root, _ = make_detection_dataset(tmp_path, fmt, n_images=3, size=64)
    named = spoil(root)
    code, err = _call(["data", "inspect", str(root), "--json"], tmp_path)
    _check(code, err)
    if code == 2:
        assert named in err, err
    else:
        # stdout is not captured by _call's caller; the report is read again through the API.
        from rscompress.api import inspect_data

        bad = [b["path"] for b in inspect_data(root)["bad_files"]]
        assert named in bad, (named, bad)


IMAGE_CORRUPTIONS = {
    "zero-byte": lambda p: _zero_byte(p.with_suffix(".png")),
    "wrong-magic": lambda p: _wrong_magic(p.with_suffix(".png")),
    "truncated-jpeg": lambda p: write_truncated_jpeg(p.with_suffix(".jpg")),
    "corrupt-png": lambda p: write_corrupt_image(p.with_suffix(".png")),
    "text-as-tif": lambda p: write_non_image(p.with_suffix(".tif")),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CORRUPTIONS))
def test_spoiled_images_in_class_folders_are_listed(tmp_path, case):
    root = make_fake_dataset(tmp_path, name="rsscn7", per_class=2, size=16)
    spoiled = root / "aGrass" / "spoiled"
    IMAGE_CORRUPTIONS[case](spoiled)
    code, err = _call(["data", "inspect", str(root), "--json"], tmp_path)
    _check(code, err)
    from rscompress.api import inspect_data

    assert any(b["path"].startswith("aGrass/spoiled") for b in inspect_data(root)["bad_files"]), case
