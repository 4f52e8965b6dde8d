"""Hostile inputs (issue 35): each ends in one line on stderr starting ``error:``, exit code 2,
no traceback, and nothing already written lost; or is refused before anything runs."""

import shutil

import pytest

from rscompress.cli import main
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
