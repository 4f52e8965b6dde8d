"""load_weights / save_weights: strict matching, partial loads, no unpickling."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from rscompress.errors import UserError
from rscompress.models import create_model, load_weights, save_weights


def _small(num_classes: int = 4) -> nn.Sequential:
    # conv 3->4 on a 3x3 image gives 4 features: the Linear's input
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(1), nn.Linear(4, num_classes))


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("resnet18", 5, small_input=True)
    target = create_model("resnet18", 5, small_input=True)
    path = tmp_path / "model.safetensors"
    save_weights(source, path)
    report = load_weights(target, path)
    assert report.complete and len(report.loaded) == len(source.state_dict())
    assert _same_state(source, target)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left


def test_pt_state_dict_loads(tmp_path: Path) -> None:
    source, target = _small(), _small()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    assert load_weights(target, tmp_path / "w.pth").complete
    assert _same_state(source, target)


def test_mismatch_is_a_user_error_naming_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(create_model("resnet18", 5), path)
    target = create_model("resnet34", 7)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match=r"w\.safetensors") as err:
        load_weights(target, path)
    message = str(err.value)
    assert "missing" in message and "layer1.2.conv1.weight" in message and "more)" in message
    assert "fc.weight: file (5, 512) vs model (7, 512)" in message
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())  # untouched


def test_partial_load_reports_and_loads_what_matches(tmp_path: Path) -> None:
    source = _small(num_classes=4)
    path = tmp_path / "w.safetensors"
    save_weights(nn.Sequential(*source, nn.ReLU(), nn.Linear(4, 2)), path)  # extra layer 5
    target = _small(num_classes=6)
    report = load_weights(target, path, allow_partial=True)
    assert report.missing == ()
    assert sorted(report.unexpected) == ["5.bias", "5.weight"]
    assert report.mismatched == (
        "3.weight: file (4, 4) vs model (6, 4)",
        "3.bias: file (4,) vs model (6,)",
    )
    assert not report.complete
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[1].running_var, source[1].running_var)


def test_missing_keys_with_partial(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(nn.Sequential(nn.Conv2d(3, 4, 3)), path)
    report = load_weights(_small(), path, allow_partial=True)
    assert report.loaded == ("0.weight", "0.bias")
    assert "1.running_mean" in report.missing and "3.weight" in report.missing


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"0.weight": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)  # torch.load warns on newer protocols
    with pytest.raises(UserError, match=r"evil\.pt.*nothing in it was run"):
        load_weights(_small(), path)
    assert not marker.exists()


def test_bad_files_are_user_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    with pytest.raises(UserError, match=r"junk\.safetensors is not a valid safetensors file"):
        load_weights(_small(), junk)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file either")
    with pytest.raises(UserError, match=r"corrupt\.pth"):
        load_weights(_small(), corrupt)
    with pytest.raises(UserError, match=r"not found: .*absent\.safetensors"):
        load_weights(_small(), tmp_path / "absent.safetensors")
    other = tmp_path / "w.npz"
    other.write_bytes(b"")
    with pytest.raises(UserError, match=r"'\.npz'"):
        load_weights(_small(), other)


def test_a_training_checkpoint_is_unwrapped_and_its_prefix_dropped(tmp_path: Path) -> None:
    import argparse

    source, target = _small(), _small()
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save(
        {"epoch": 3, "args": argparse.Namespace(lr=0.1), "optimizer": {"state": {}}, "state_dict": wrapped},
        tmp_path / "ckpt.pth.tar.pth",
    )
    assert load_weights(target, tmp_path / "ckpt.pth.tar.pth").complete
    assert _same_state(source, target)


def test_a_checkpoint_without_a_state_dict_names_what_it_has(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"weights": [1, 2], "epoch": 3}, path)
    with pytest.raises(UserError, match=r"ckpt\.pt does not hold a state dict .* keys \['epoch', 'weights'\]"):
        load_weights(_small(), path)


def test_a_torchvision_file_fills_an_se_model_whose_se_blocks_start_fresh(tmp_path: Path) -> None:
    import torchvision

    source = torchvision.models.resnet18(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    target = create_model("se_resnet18", 21)
    se_before = target.layer1[0].bn1.se.fc1.weight.clone()
    with pytest.raises(UserError, match=r"fc\.weight: file \(1000, 512\) vs model \(21, 512\).*--new-head"):
        load_weights(target, tmp_path / "resnet18-f37072fd.pth")
    report = load_weights(target, tmp_path / "resnet18-f37072fd.pth", new_head=True)
    assert report.complete and "fc.weight" in report.fresh and "layer1.0.bn1.se.fc1.weight" in report.fresh
    assert torch.equal(target.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert torch.equal(target.layer1[0].bn1.se.fc1.weight, se_before)


def test_shared_and_non_contiguous_tensors_save(tmp_path: Path) -> None:
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    transposed = nn.Linear(4, 4, bias=False)
    transposed.weight = nn.Parameter(torch.randn(4, 4).t())
    model = nn.Sequential(tied, transposed)
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    fresh = nn.Sequential(
        nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)),
        nn.Linear(4, 4, bias=False),
    )
    assert load_weights(fresh, path).complete
    assert _same_state(model, fresh)


def test_saved_weights_get_the_usual_file_mode(tmp_path: Path) -> None:
    # safetensors recreates the file it writes at 0600; other users of a shared run dir
    # must be able to read the model like the run's JSON files.
    old = os.umask(0o022)
    try:
        save_weights(_small(), tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o644
