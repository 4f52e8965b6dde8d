"""Hostile inputs (issue 35): each ends in one line on stderr starting ``error:``, exit code 2,
no traceback, and nothing already written lost; or is refused before anything runs."""

import json
import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import rscompress as rsc
from rscompress.cli import main
from rscompress.errors import UserError
from tests.fakes import make_fake_dataset


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert err.startswith("error: "), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("d"), name="rsscn7", per_class=4, size=16)


def train_args(dataset, out, *more):
    return ("train", "--data", dataset, "--model", "resnet18", "--img-size", 16, "--epochs", 1,
            "--batch-size", 8, "--out", out, "-q", *more)  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main([str(a) for a in train_args(dataset, out)]) == 0
    return out


@pytest.fixture
def run_copy(tmp_path, finished_run):
    """A finished run of its own, to spoil."""
    return shutil.copytree(finished_run, tmp_path / "run")


# -- typer's own errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["train", "--bogus"], "--bogus"),
        (["train", "--data", "d", "--model", "resnet18", "--out", "o", "--epochs", "nan"], "--epochs"),
    ],
)
def test_parse_errors_are_one_line(capsys, args, needle):
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, needle)


# -- values refused before anything runs -----------------------------------------------------


@pytest.mark.parametrize(
    "flag,value",
    [("--lr", "inf"), ("--weight-decay", "inf"), ("--momentum", "nan"), ("--label-smoothing", "nan")],
)
def test_non_finite_train_options_are_refused(capsys, tmp_path, dataset, flag, value):
    code, _, err = run_cli(capsys, *train_args(dataset, tmp_path / "r", flag, value))
    assert_one_line_error(code, err, flag, "finite")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag", ["--sparse-rate", "--sparse-lr", "--target-macs", "--temperature"])
def test_non_finite_prune_options_are_refused(capsys, tmp_path, flag):
    code, _, err = run_cli(
        capsys, "prune", tmp_path / "parent", "--method", "slim", "--out", tmp_path / "out",
        *(() if flag == "--target-macs" else ("--target-macs", "0.5")), flag, "inf",
    )  # fmt: skip
    assert_one_line_error(code, err, flag, "finite")
    assert not (tmp_path / "out").exists()


def test_a_seed_torch_cannot_take_is_refused(capsys, tmp_path, dataset):
    code, _, err = run_cli(capsys, *train_args(dataset, tmp_path / "r", "--seed", 2**70))
    assert_one_line_error(code, err, "--seed")
    assert not (tmp_path / "r").exists()


def test_run_on_a_folder_or_a_binary_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", tmp_path)
    assert_one_line_error(code, err, str(tmp_path), "Is a directory")
    binary = tmp_path / "recipe.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run_cli(capsys, "run", binary)
    assert_one_line_error(code, err, str(binary), "not UTF-8")


# -- a run dir edited or spoiled -------------------------------------------------------------


def _edit_config(run, edit):
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))


def _use_run(run, tmp_path):
    """Every command that loads a finished run's model (the Python API's load too)."""
    return [
        ("evaluate", run),
        ("export", run, "--out", tmp_path / "m.onnx"),
        ("prune", run, "--method", "l1", "--target-macs", "0.5", "--finetune-epochs", 1, "--out", tmp_path / "p"),
    ]


@pytest.mark.parametrize(
    "edit,needles",
    [
        (lambda c: c["model_kwargs"].update(wings=2), ["config.json", "resnet18", "'wings'"]),
        (lambda c: c.update(num_classes=5), ["config.json", "num_classes is 5", "7"]),
        (lambda c: c.update(num_classes=5, class_names=c["class_names"][:5]), ["model.safetensors", "fc.weight"]),
        (lambda c: c.update(img_size="big"), ["config.json", "img_size"]),
        (lambda c: c.pop("mean"), ["config.json", "mean"]),
    ],
)
def test_an_edited_config_json_is_one_line_naming_the_key(capsys, tmp_path, run_copy, edit, needles):
    _edit_config(run_copy, edit)
    for args in _use_run(run_copy, tmp_path):
        code, _, err = run_cli(capsys, *args)
        assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "p").exists()
    with pytest.raises(UserError, match=needles[-1]):
        rsc.load(run_copy)


@pytest.mark.parametrize("bad,suffix", [(float("nan"), ".safetensors"), (float("inf"), ".pth")])
def test_weights_holding_non_finite_values_are_refused_by_tensor(capsys, tmp_path, dataset, bad, suffix):
    import torch
    from safetensors.torch import save_file

    from rscompress.models import create_model

    state = create_model("resnet18", 7).state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = bad
    weights = tmp_path / f"w{suffix}"
    save_file(state, weights) if suffix == ".safetensors" else torch.save(state, weights)
    code, _, err = run_cli(capsys, *train_args(dataset, tmp_path / "r", "--weights", weights))
    assert_one_line_error(code, err, str(weights), "layer2.0.conv1.weight", "NaN or inf")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, dataset):
    """A run killed after its last epoch's checkpoint, before its final weights."""
    from rscompress.artifacts import RunDir

    out = tmp_path_factory.mktemp("runs") / "interrupted"

    class Killed(Exception):
        pass

    def kill(*_args, **_kwargs):
        raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunDir, "save_weights", kill)
        with pytest.raises(Killed):
            main([str(a) for a in train_args(dataset, out, "--epochs", 2)])
    return out


def _other_model_weights(path, num_classes=7, name="mobilenet_v2"):
    from safetensors.torch import save_file

    from rscompress.models import create_model

    save_file({k: v.contiguous() for k, v in create_model(name, num_classes).state_dict().items()}, path)


def _optim_buffer_of_another_shape(path):
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    state[next(k for k in sorted(state) if k.endswith("momentum_buffer"))] = torch.zeros(3, 3)
    save_file(state, path)


SPOILED_CHECKPOINTS = {
    "garbage state.json": ("checkpoint/epoch-0001/state.json", lambda p: p.write_text("garbage{"), "state.json"),
    "state.json of another layout": (
        "checkpoint/epoch-0001/state.json", lambda p: p.write_text('{"epoch": "x"}'), "state.json",
    ),
    "garbage latest.json": ("checkpoint/latest.json", lambda p: p.write_text("garbage"), "latest.json"),
    "latest.json of another layout": ("checkpoint/latest.json", lambda p: p.write_text("[1, 2]"), "latest.json"),
    "another architecture's weights": (
        "checkpoint/epoch-0001/model.safetensors", _other_model_weights, "model.safetensors",
    ),
    "another class count's best weights": (
        "checkpoint/best.safetensors", lambda p: _other_model_weights(p, 5, "resnet18"), "fc.weight",
    ),
    "another architecture's optimizer state": (
        "checkpoint/epoch-0001/optim.safetensors", _other_model_weights, "epoch-0001",
    ),
    "optimizer buffers of other shapes": (
        "checkpoint/epoch-0001/optim.safetensors", _optim_buffer_of_another_shape, "momentum_buffer",
    ),
    "a non-JSON line in history.jsonl": (
        "history.jsonl", lambda p: p.write_text("not json\n" + p.read_text()), "history.jsonl line 1",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", SPOILED_CHECKPOINTS)
def test_a_spoiled_checkpoint_is_one_line_and_loses_nothing(capsys, tmp_path, dataset, interrupted_run, case):
    name, spoil, needle = SPOILED_CHECKPOINTS[case]
    run = shutil.copytree(interrupted_run, tmp_path / "run")
    spoil(run / name)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = run_cli(capsys, *train_args(dataset, run, "--epochs", 2, "--resume"))
    assert_one_line_error(code, err, needle)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_history_row_cut_short_by_a_kill_is_dropped_on_resume(capsys, tmp_path, dataset, interrupted_run):
    run = shutil.copytree(interrupted_run, tmp_path / "run")
    with open(run / "history.jsonl", "a") as fh:
        fh.write('{"epoch": 1, "lr')
    code, _, err = run_cli(capsys, *train_args(dataset, run, "--epochs", 2, "--resume"))
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in (run / "history.jsonl").read_text().splitlines()] == [0, 1]


# -- a full or read-only --out ---------------------------------------------------------------


def _disk_full(*_args, **_kwargs):
    """What safetensors raises when the disk fills mid-write (a SafetensorError, not an OSError)."""
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_a_full_disk_at_the_final_weights_is_one_line_and_resume_finishes(capsys, monkeypatch, tmp_path, dataset):
    import rscompress.models.weights

    run = tmp_path / "run"
    save_file = rscompress.models.weights.save_file

    def full_at_the_final_weights(tensors, path, **kwargs):
        if Path(path).parent == run:  # the checkpoints (in run/checkpoint/) fitted
            _disk_full()
        save_file(tensors, path, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(rscompress.models.weights, "save_file", full_at_the_final_weights)
        code, _, err = run_cli(capsys, *train_args(dataset, run))
    assert_one_line_error(code, err, str(run / "model.safetensors"), "No space left on device")
    assert (run / "checkpoint" / "latest.json").is_file()  # the trained epoch is kept
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    code, _, err = run_cli(capsys, *train_args(dataset, run, "--resume"))
    assert code == 0, err
    assert (run / "metrics.json").is_file()


def test_a_checkpoint_the_disk_refuses_is_one_line(capsys, monkeypatch, tmp_path, dataset):
    import rscompress.engine.checkpoint

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rscompress.engine.checkpoint, "write_safetensors", refuse)
    code, _, err = run_cli(capsys, *train_args(dataset, tmp_path / "run"))
    assert_one_line_error(code, err, "model.safetensors", "Permission denied")


def test_an_export_into_a_folder_the_disk_refuses_is_one_line(capsys, monkeypatch, tmp_path, finished_run):
    import tempfile

    def read_only(*_args, **_kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", read_only)
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(capsys, "export", finished_run, "--out", out)
    assert_one_line_error(code, err, str(out), "Read-only file system")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 folder")
def test_a_read_only_out_folder_is_one_line(capsys, tmp_path, dataset):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, *train_args(dataset, parent / "run"))
    finally:
        parent.chmod(0o755)
    assert_one_line_error(code, err, str(parent / "run"))


# -- what the model cannot train on ----------------------------------------------------------


@pytest.mark.parametrize(
    "model,more,needles",
    [
        ("resnet18", ("--batch-size", 1), ["--batch-size 1", "resnet18", "BatchNorm", "16 px"]),
        ("vgg16_bn", (), ["vgg16_bn", "16 px", "--img-size", "smallest size it takes is 32 px"]),
    ],
)
def test_inputs_the_model_cannot_train_on_are_refused_before_the_run_dir(
    capsys, tmp_path, dataset, model, more, needles
):
    args = [a if a != "resnet18" else model for a in train_args(dataset, tmp_path / "r", *more)]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "r").exists()


def test_batch_size_1_trains_where_no_batchnorm_sees_a_single_value(capsys, tmp_path, dataset):
    from rscompress.models import create_model
    from rscompress.models.probe import check_trainable

    check_trainable(create_model("resnet18", 7), "resnet18", 64, 1)  # its last maps are 2×2
    with pytest.raises(UserError, match="layer4"):
        check_trainable(create_model("resnet18", 7), "resnet18", 32, 1)


def test_prune_and_distill_check_the_batch_size_too(capsys, tmp_path, finished_run):
    code, _, err = run_cli(
        capsys, "prune", finished_run, "--method", "l1", "--target-macs", "0.5", "--batch-size", 1,
        "--out", tmp_path / "p",
    )  # fmt: skip
    assert_one_line_error(code, err, "--batch-size 1")
    code, _, err = run_cli(
        capsys, "distill", "--teacher", finished_run, "--student", "vgg16_bn", "--out", tmp_path / "d"
    )
    assert_one_line_error(code, err, "vgg16_bn", "32 px")
    assert not (tmp_path / "p").exists() and not (tmp_path / "d").exists()


def test_a_class_of_one_image_is_a_warning_saying_it_has_no_val_or_test_image(tmp_path):
    from rscompress.config import DataConfig
    from rscompress.data.prepare import prepare_data
    from tests.fakes import make_image_folder

    root = make_image_folder(tmp_path / "data", {"forest": 6, "river": 6, "rare": 1})
    data = prepare_data(DataConfig(path=root, img_size=16), None)
    assert [w for w in data.warnings if "rare" in w] == [
        "class rare has 1 image(s) and no val/test image: its accuracy there is not measured"
    ]
    assert not [w for w in data.warnings if "forest" in w or "river" in w]


# -- one pixel limit for every image format --------------------------------------------------


def _tiff_claiming(path, width, height):
    """A small TIFF whose header says ``width``×``height``: decoding it would take that much memory."""
    import numpy as np
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)
    return path


def test_a_huge_tiff_is_refused_from_its_header(tmp_path):
    from rscompress.data.datasets import BadImageError, decode_image

    with pytest.raises(BadImageError, match="20000x20000 = 400000000 pixels is more than the limit"):
        decode_image(_tiff_claiming(tmp_path / "huge.tif", 20000, 20000))


def test_png_and_tiff_are_held_to_the_same_pixel_limit(tmp_path, monkeypatch):
    from PIL import Image

    from rscompress.data.datasets import BadImageError, decode_image
    from tests.fakes import fake_pixels, write_fake_image

    pixels = fake_pixels(0, 1, 0, 16)  # 256 pixels
    png, tif = (write_fake_image(tmp_path / "img", pixels, fmt) for fmt in ("png", "tif16"))
    for limit, refused in ((127, True), (128, False)):  # Pillow refuses above twice the setting
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        for path in (png, tif):
            if refused:
                with pytest.raises(BadImageError):
                    decode_image(path)
            else:
                with pytest.warns(Image.DecompressionBombWarning) if path == png else nullcontext():
                    assert decode_image(path).shape == (16, 16, 3)


# -- temp files of a writer killed mid-write -------------------------------------------------


def test_temp_files_a_kill_left_are_removed_at_the_next_start(tmp_path, interrupted_run):
    from rscompress.artifacts import RunDir

    run = shutil.copytree(interrupted_run, tmp_path / "run")
    left = [
        run / ".model.safetensors.k3j9.tmp",
        run / "checkpoint" / "epoch-0001" / ".optim.safetensors.a1b2.tmp",
        run / ".onnx-export-x7y8" / "model.onnx",
        run / ".int8-export-q1w2" / "model.int8.onnx",
        run / ".int8-fp32-e3r4" / "fp32.onnx",
    ]
    for path in left:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half written")
    kept = [run / "notes.tmp", run / ".hidden"]  # not names rscompress writes to
    # A run dir inside this one, held by a writer of its own: its temp file may be being written.
    (run / "nested").mkdir()
    (run / "nested" / ".rscompress.lock").write_text("4242\n")
    kept.append(run / "nested" / ".model.safetensors.w1.tmp")
    for path in kept:
        path.write_text("mine")
    elsewhere = tmp_path / "elsewhere"  # a link's target is not the run dir's to remove
    (elsewhere / "x").mkdir(parents=True)
    (run / ".onnx-export-link").symlink_to(elsewhere / "x", target_is_directory=True)
    (run / ".link.tmp").symlink_to(elsewhere / "x")
    with RunDir(run).owned():  # as every step that writes a run dir starts (train --resume, export, ...)
        assert not [p for p in left if p.exists()]
        assert not [p.parent for p in left if p.parent.exists() and p.parent.name.startswith((".onnx", ".int8"))]
        assert (run / "checkpoint" / "epoch-0001" / "model.safetensors").is_file()
        assert all(p.read_text() == "mine" for p in kept)
        assert (elsewhere / "x").is_dir()


# -- outputs that are not what they should be ------------------------------------------------


@pytest.mark.parametrize("step", ["train", "prune", "distill"])
def test_out_naming_a_file_is_one_line_and_the_file_is_kept(capsys, tmp_path, dataset, finished_run, step):
    out = tmp_path / "taken"
    out.write_text("mine\n")
    args = {
        "train": train_args(dataset, out),
        "prune": ("prune", finished_run, "--method", "l1", "--target-macs", "0.5", "--out", out),
        "distill": ("distill", "--teacher", finished_run, "--student", "resnet18", "--out", out),
    }[step]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, str(out), "is a file")
    assert out.read_text() == "mine\n"


@pytest.mark.parametrize("name", ["folder", "folder.onnx"])
def test_export_out_naming_a_folder_is_one_line(capsys, tmp_path, finished_run, name):
    (tmp_path / name).mkdir()
    code, _, err = run_cli(capsys, "export", finished_run, "--out", tmp_path / name)
    assert_one_line_error(code, err, str(tmp_path / name))
    assert not list((tmp_path / name).iterdir())


def test_missing_weights_file_is_refused_before_the_data_is_read(capsys, dataset, tmp_path):
    # Found by tests/test_fuzz_cli.py: refused once the images were decoded, after the data's
    # warnings, the error was the last of three lines.
    without_quiet = train_args(dataset, tmp_path / "run")[:-1]  # the data's warnings would be shown
    code, _, err = run_cli(capsys, *without_quiet, "--weights", tmp_path / "gone.pt")
    assert_one_line_error(code, err, "weights file not found", "gone.pt")


def test_a_warning_is_one_line(capsys, dataset, tmp_path):
    # Wrapped at the console's width (80 columns when stderr is not a terminal) it read as two.
    code, _, err = run_cli(capsys, *train_args(dataset, tmp_path / "run")[:-1])  # without -q: warnings shown
    assert code == 0
    warning = next(line for line in err.splitlines() if line.startswith("warning: classes match RSSCN7"))
    assert warning.endswith("not comparable with published numbers"), err


HUGE = 10**23  # found by tests/test_fuzz_cli.py: an overflow in torch (a traceback), or a bench for ages


@pytest.mark.parametrize(
    "command,needle",
    [
        (lambda d, r, o: train_args(d, o, "--batch-size", HUGE), "--batch-size: Input should be less than or equal"),
        (lambda d, r, o: train_args(d, o, "--threads", HUGE), "--threads: Input should be less than or equal"),
        (lambda d, r, o: ("bench", r, "--batch-size", HUGE), "batch size must be 1 to 65536"),
        (lambda d, r, o: ("bench", r, "--threads", HUGE), "threads must be 1 to 1024"),
        (lambda d, r, o: ("bench", r, "--repeats", HUGE), "need repeats of 1 to 100000"),
        (lambda d, r, o: ("bench", r, "--warmup", HUGE), "need repeats of 1 to 100000"),
    ],
)
def test_huge_counts_are_refused_by_name(capsys, dataset, finished_run, tmp_path, command, needle):
    code, _, err = run_cli(capsys, *command(dataset, finished_run, tmp_path / "out"))
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()
