"""Bad input: one line on stderr naming the bad thing, exit code 2, no traceback."""

import subprocess
import sys

import pytest

from rscompress.cli import main
from tests.fakes import make_fake_dataset


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("d"), name="rsscn7", per_class=4, size=16)


def _assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_folder(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "train", "--data", str(tmp_path / "nope"), "--model", "resnet18", "--out", str(tmp_path / "r")
    )
    _assert_one_line_error(code, err, "nope")


def test_empty_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(
        capsys, "train", "--data", str(tmp_path / "empty"), "--model", "resnet18", "--out", str(tmp_path / "r")
    )
    _assert_one_line_error(code, err, "empty")


def test_one_class_only(capsys, tmp_path, dataset):
    one = tmp_path / "one"
    (one / "aGrass").mkdir(parents=True)
    for f in (dataset / "aGrass").iterdir():
        (one / "aGrass" / f.name).write_bytes(f.read_bytes())
    code, _, err = run_cli(capsys, "train", "--data", str(one), "--model", "resnet18", "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, err, "class")


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--img-size", "0", "--img-size"),
        ("--img-size", "-5", "--img-size"),
        ("--train-fraction", "0.9", "sum to 1"),
        ("--val-fraction", "1.5", "--val-fraction"),
        ("--epochs", "0", "--epochs"),
        ("--optimizer", "adam", "--optimizer"),
        ("--milestones", "a,b", "--milestones"),
    ],
)
def test_bad_values_name_the_option(capsys, tmp_path, dataset, flag, value, needle):
    code, _, err = run_cli(
        capsys, "train", "--data", str(dataset), "--model", "resnet18", "--out", str(tmp_path / "r"), flag, value
    )
    _assert_one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()


def test_unknown_model(capsys, tmp_path, dataset):
    code, _, err = run_cli(
        capsys, "train", "--data", str(dataset), "--model", "resnet19", "--out", str(tmp_path / "r"), "--img-size", "16"
    )
    _assert_one_line_error(code, err, "resnet19")


def test_unreadable_run_dir(capsys, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "missing-run"))
    _assert_one_line_error(code, err, "missing-run")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    code, _, err = run_cli(capsys, "evaluate", str(broken))
    _assert_one_line_error(code, err, "config.json")


def test_real_process_prints_no_traceback_and_debug_does(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "rscompress",
        "train",
        "--data",
        str(tmp_path / "nope"),
        "--model",
        "resnet18",
        "--out",
        str(tmp_path / "r"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    debug = subprocess.run([cmd[0], "-m", "rscompress", "--debug", *cmd[3:]], capture_output=True, text=True)
    assert "Traceback" in debug.stderr


def test_models_lists_registry(capsys):
    code, out, _ = run_cli(capsys, "models", "--filter", "resnet1")
    assert code == 0
    # the registry's own first, then torchvision's (timm's too where it is installed)
    names = out.split()
    assert names[:3] == ["fcos_resnet18", "resnet18", "se_resnet18"]  # detectors are in the registry too
    assert {"torchvision/resnet18", "torchvision/resnet101"} <= set(names[3:])
    assert all(n.startswith(("torchvision/", "timm/")) for n in names[3:])


def test_methods_lists_every_method_with_the_options_it_owns(capsys):
    from rscompress.pruning.methods import METHODS

    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(METHODS)
    assert lines[list(METHODS).index("nas")].endswith("[--gate-without-bn --search-epochs]")


def test_an_option_of_another_method_is_one_error_naming_it(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "prune", str(tmp_path / "parent"), "--method", "l1", "--target-macs", "0.5",
        "--search-epochs", "3", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2 and "--search-epochs is an option of --method nas; --method l1 has none" in err
    assert not (tmp_path / "out").exists()
