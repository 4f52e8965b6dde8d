"""G-Ghost RegNet (rscompress.models.ghostnet): sizes, shapes, gradients, Torch-Pruning."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from rscompress.models import create_model, list_models
from rscompress.models.ghostnet import (
    CONFIGS,
    GGhostRegNet,
    GGhostStage,
    g_ghost_regnet,
)

# METHODS.md §4: parameter counts with a 1000-class head, from the reference implementation
PUBLISHED_PARAMS_M = {
    "g_ghost_regnetx_002": 1.83,
    "g_ghost_regnetx_004": 2.88,
    "g_ghost_regnetx_006": 4.03,
    "g_ghost_regnetx_008": 5.25,
    "g_ghost_regnetx_016": 7.11,
    "g_ghost_regnetx_032": 10.51,
    "g_ghost_regnetx_040": 15.73,
    "g_ghost_regnetx_080": 24.59,
}
# our own small sizes (documented in ghostnet.py)
OUR_PARAMS = {
    ("g_ghost_regnetx_tiny", 1000): 291_904,
    ("g_ghost_regnetx_tiny", 10): 164_194,
    ("g_ghost_regnetx_small", 1000): 550_136,
    ("g_ghost_regnetx_small", 10): 359_066,
}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.rand(n, generator=g) * 0.4 - 0.2
            m.running_mean = torch.rand(n, generator=g) * 0.2 - 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5


def test_all_sizes_registered() -> None:
    assert set(CONFIGS) <= set(list_models("g_ghost"))
    assert set(PUBLISHED_PARAMS_M) <= set(CONFIGS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_param_count_matches_published(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_model(name, num_classes=1000)
    published = PUBLISHED_PARAMS_M[name] * 1e6
    assert abs(_n_params(model) - published) / published < 0.02
    # and within the rounding of the 2-decimal published figure
    assert abs(_n_params(model) - published) <= 0.005e6


@pytest.mark.parametrize(("name", "num_classes"), sorted(OUR_PARAMS))
def test_small_sizes_param_counts(name: str, num_classes: int) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    assert _n_params(model) == OUR_PARAMS[(name, num_classes)]


def test_stage_kinds_follow_depths() -> None:
    with torch.device("meta"):
        m002 = g_ghost_regnet("g_ghost_regnetx_002", 10)  # depths 1,1,4,7
        m016 = g_ghost_regnet("g_ghost_regnetx_016", 10)  # depths 2,4,10,2
    assert isinstance(m002.layer1, nn.Sequential) and isinstance(m002.layer2, nn.Sequential)
    assert isinstance(m002.layer3, GGhostStage) and isinstance(m002.layer4, GGhostStage)
    assert isinstance(m016.layer2, GGhostStage) and isinstance(m016.layer4, nn.Sequential)
    # 002 stage 3: width 152, gw 8 -> gw' 6, raw = floor(76/6)*6 = 72, 2 thin middle blocks
    s = m002.layer3
    assert (s.raw_channels, s.cheap_channels, len(s.layers)) == (72, 80, 2)
    assert s.layers[0].conv2.groups == 72 // 6 and s.layers[0].downsample is None
    assert s.merge[1].in_channels == 152 + 2 * 72
    assert s.base.conv2.stride == (2, 2) and s.base.conv2.groups == 152 // 8


@pytest.mark.parametrize(("size", "small_input"), [(32, True), (64, False)])
def test_forward_backward_tiny(size: int, small_input: bool) -> None:
    torch.manual_seed(0)
    model = create_model("g_ghost_regnetx_tiny", num_classes=7, small_input=small_input).train()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_forward_backward_small_with_ghost_stage_2() -> None:
    model = create_model("g_ghost_regnetx_small", num_classes=5, small_input=True)
    assert isinstance(model.layer2, GGhostStage)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)
    out.sum().backward()


@pytest.mark.parametrize("name", ["g_ghost_regnetx_tiny", "g_ghost_regnetx_002"])
def test_forward_224(name: str) -> None:
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)


def test_small_input_stem_and_feature_sizes() -> None:
    big = create_model("g_ghost_regnetx_tiny", 10).eval()
    small = create_model("g_ghost_regnetx_tiny", 10, small_input=True).eval()
    assert big.conv1.stride == (2, 2) and small.conv1.stride == (1, 1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert big.forward_features(x).shape == (1, 128, 2, 2)  # total stride 32
        assert small.forward_features(x).shape == (1, 128, 4, 4)  # total stride 16


def test_two_block_ghost_stage_has_no_middle_blocks() -> None:
    model = GGhostRegNet((1, 1, 2, 1), (16, 32, 64, 128), 8, num_classes=3, small_input=True)
    assert isinstance(model.layer3, GGhostStage) and len(model.layer3.layers) == 0
    assert model.layer3.merge[1].in_channels == 64
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_bad_configs_raise() -> None:
    with pytest.raises(ValueError, match="4 depths"):
        GGhostRegNet((1, 1, 2), (16, 32, 64), 8)
    with pytest.raises(ValueError, match="divisible"):
        GGhostRegNet((1, 1, 2, 1), (16, 44, 64, 128), 8)  # 44 // 8 = 5 groups
    with pytest.raises(ValueError, match=">= 2 blocks"):
        GGhostStage(16, 64, depth=1, stride=2, group_width=8)


def _prune_exactly(model: nn.Module, root: nn.BatchNorm2d, idxs: list[int]) -> float:
    """Zero the BN scale/shift of channels ``idxs`` of ``root``'s group (so they carry exact
    zeros), prune them, and return the largest output change: 0 if the index mapping of every
    coupled layer (split, concat, residual, mix operation) is right."""
    model.eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    group = dg.get_pruning_group(root, tp.prune_batchnorm_out_channels, idxs=idxs)
    with torch.no_grad():
        for dep, ii in group:
            if dep.pruning_fn == tp.prune_batchnorm_out_channels:
                dep.layer.weight[ii] = 0
                dep.layer.bias[ii] = 0
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        before = model(x)
        group.prune()
        after = model(x)
    return (before - after).abs().max().item()


@pytest.mark.parametrize("depths", [(1, 1, 3, 3), (1, 3, 2, 1)], ids=["middle-blocks", "two-block-stage3"])
def test_torch_pruning_index_mapping_is_exact(depths: tuple[int, int, int, int]) -> None:
    # Remove channels on both sides of the raw/cheap split of a G-Ghost stage's first block
    # output, and channels of the cheap path (which the mix operation and the concat share).
    torch.manual_seed(0)
    model = GGhostRegNet(depths, (16, 32, 64, 128), 8, num_classes=10, small_input=True)
    _randomise_bn(model)
    stage = model.layer3
    raw, cheap = stage.raw_channels, stage.cheap_channels
    width = raw + cheap
    assert _prune_exactly(model, stage.base.bn3, [0, raw - 1, raw, width - 1]) < 1e-5
    assert (stage.raw_channels, stage.cheap_channels) == (raw - 2, cheap - 2)
    assert _prune_exactly(model, stage.cheap[1], [0, 1, cheap - 3]) < 1e-5
    assert stage.merge[5].num_features == stage.cheap[1].num_features == cheap - 3
    # the end block sees the raw path (2 channels fewer) and the cheap path (3 fewer)
    assert stage.end.conv1.in_channels == width - 2 - 3


def _ghost_widths(model: nn.Module) -> list[tuple[int, int, int]]:
    stages = (model.layer3, model.layer4)
    return [(s.raw_channels, s.cheap_channels, s.end.bn3.num_features) for s in stages]


def test_torch_pruning_meta_pruner_on_tiny() -> None:
    torch.manual_seed(0)
    model = create_model("g_ghost_regnetx_tiny", num_classes=10, small_input=True).eval()
    example = torch.randn(1, 3, 32, 32)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    assert dg is not None
    before = _n_params(model)
    widths_before = _ghost_widths(model)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[model.fc],
    )
    pruner.step()
    after = _n_params(model)
    assert after < 0.5 * before
    # the cheap path and the stage outputs shrink (how much of the raw path goes is up to
    # the importance: GroupMagnitudeImportance ranks raw channels higher, see the report)
    for a, b in zip(_ghost_widths(model), widths_before, strict=True):
        assert a[1] < b[1] and a[2] < b[2]
    assert model.fc.out_features == 10
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
