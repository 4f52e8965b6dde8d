"""Pickle-free rebuild: prune, write spec JSON + safetensors, rebuild in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rscompress.errors import UserError
from rscompress.models import create_model, save_weights
from rscompress.pruning import apply_architecture, architecture_spec, prune

NUM_CLASSES = 4
IMG = 32
# Every registered architecture family. VGG with small_input=True: same 13 convs, but a
# 512-wide head instead of the 25088→4096→4096 one (134 M params, ~0.5 GB to write).
ARCHS = [
    ("resnet18", False),
    ("resnet18", True),
    ("resnet34", False),
    ("resnet50", False),
    ("vgg16_bn", True),
    ("mobilenet_v2", False),
    ("mobilenet_v2", True),
    ("se_resnet18", True),
    ("se_resnet34", False),
    ("se_resnet50", False),
    ("se_vgg16_bn", True),
    ("g_ghost_regnetx_tiny", False),
]

# Runs in a fresh interpreter: nothing from the pruning process survives but the files.
CHILD = """
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file

torch.set_num_threads(1)  # tiny inputs: threads cost more than they save
from rscompress.models import create_model
from rscompress.pruning import apply_architecture

diffs = {}
for case in sorted(Path(sys.argv[1]).iterdir()):
    meta = json.loads((case / "config.json").read_text())
    model = create_model(meta["model"], meta["num_classes"], small_input=meta["small_input"])
    apply_architecture(model, meta["architecture"])
    model.load_state_dict(load_file(case / "model.safetensors"), strict=True)
    io = load_file(case / "io.safetensors")
    with torch.no_grad():
        logits = model.eval()(io["x"])
    diffs[case.name] = (logits - io["logits"]).abs().max().item()
print(json.dumps(diffs))
"""


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN statistics and affine terms, so a misplaced channel changes the logits."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def _write_case(root: Path, name: str, small_input: bool) -> int:
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, small_input=small_input)
    _randomize_bn(model, torch.Generator().manual_seed(1))
    parent_params = sum(p.numel() for p in model.parameters())
    prune(model, "l1", torch.zeros(1, 3, IMG, IMG), ratio=0.5)
    model.eval()
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(x)
    case = root / f"{name}-{'small' if small_input else 'std'}"
    case.mkdir()
    spec = json.loads(json.dumps(architecture_spec(model)))  # must survive JSON
    meta = {"model": name, "num_classes": NUM_CLASSES, "small_input": small_input, "architecture": spec}
    (case / "config.json").write_text(json.dumps(meta))
    save_weights(model, case / "model.safetensors")
    save_file({"x": x, "logits": logits.contiguous()}, case / "io.safetensors")
    assert sum(p.numel() for p in model.parameters()) < 0.5 * parent_params
    return parent_params


@pytest.mark.slow
def test_round_trip_in_fresh_process_for_every_architecture(tmp_path: Path) -> None:
    for name, small_input in ARCHS:
        _write_case(tmp_path, name, small_input)
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    diffs = json.loads(out.stdout)
    assert len(diffs) == len(ARCHS)
    assert all(d <= 1e-5 for d in diffs.values()), diffs


def test_spec_records_pruned_shapes_and_se_layers() -> None:
    model = create_model("se_resnet18", NUM_CLASSES, small_input=True)
    prune(model, "l1", torch.zeros(1, 3, 16, 16), ratio=0.5)
    layers = architecture_spec(model)["layers"]
    assert layers["conv1"] == {"type": "Conv2d", "in_channels": 3, "out_channels": 32, "groups": 1}
    assert layers["bn1"] == {"type": "SEBatchNorm2d", "num_features": 32}
    assert layers["bn1.se.fc1"] == {"type": "Linear", "in_features": 32, "out_features": 4}
    assert layers["fc"]["out_features"] == NUM_CLASSES


def test_apply_rejects_a_spec_of_another_model() -> None:
    spec = architecture_spec(create_model("resnet18", NUM_CLASSES))
    with pytest.raises(UserError, match="does not fit"):
        apply_architecture(create_model("resnet34", NUM_CLASSES), spec)
    with pytest.raises(UserError, match="version"):
        apply_architecture(create_model("resnet18", NUM_CLASSES), {"layers": spec["layers"]})
    spec["layers"]["layer1.0.conv1"]["out_channels"] = 0
    with pytest.raises(UserError, match=r"layer1\.0\.conv1"):
        apply_architecture(create_model("resnet18", NUM_CLASSES), spec)


def test_unsupported_layer_fails_when_the_spec_is_written() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8))
    with pytest.raises(ValueError, match="GroupNorm"):
        architecture_spec(model)


def test_identity_names_a_spec_gives_are_checked_before_anything_changes():
    import torchvision

    from rscompress.pruning.rebuild import apply_architecture, architecture_spec

    model = torchvision.models.mobilenet_v3_small(num_classes=4)
    spec = architecture_spec(model)
    bad = {**spec, "identity": ["features.99.block"]}
    with pytest.raises(UserError, match=r"identity layers \['features\.99\.block'\] are not modules"):
        apply_architecture(torchvision.models.mobilenet_v3_small(num_classes=4), bad)
    se = "features.1.block.1"
    folded = torchvision.models.mobilenet_v3_small(num_classes=4)
    folded.features[1].block[1] = nn.Identity()
    fresh = apply_architecture(torchvision.models.mobilenet_v3_small(num_classes=4), architecture_spec(folded))
    assert isinstance(fresh.get_submodule(se), nn.Identity)
    assert fresh.state_dict().keys() == folded.state_dict().keys()
