"""One-shot pruning of real registry models with every criterion."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rscompress.errors import UserError
from rscompress.models import create_model
from rscompress.pruning import (
    IMPORTANCES,
    accumulate_gradients,
    find_classifier,
    make_importance,
    prune,
)

NUM_CLASSES = 3
EXAMPLE = torch.zeros(1, 3, 32, 32)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def calibration_batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, NUM_CLASSES, (4,), generator=gen)) for _ in range(n)
    ]


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", NUM_CLASSES)


def run(model: nn.Module, size: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, size, size))


@pytest.mark.parametrize("criterion", IMPORTANCES)
def test_each_criterion_prunes_resnet18(criterion: str) -> None:
    model = resnet18()
    if criterion == "taylor":
        accumulate_gradients(model, calibration_batches())
    before = n_params(model)
    fc_bias = model.fc.bias.detach().clone()
    prune(model, criterion, EXAMPLE, ratio=0.5)
    assert n_params(model) < 0.4 * before  # ~(1 − 0.5)² of the conv weights remain
    assert run(model).shape == (2, NUM_CLASSES)
    assert model.fc.out_features == NUM_CLASSES and torch.equal(model.fc.bias, fc_bias)
    assert model.fc.in_features == model.layer4[1].bn2.num_features < 512


def test_classifier_outputs_are_never_pruned_and_its_kept_inputs_unchanged() -> None:
    model = resnet18()
    old = model.fc.weight.detach().clone()
    prune(model, "l1", EXAMPLE, ratio=0.7, global_pruning=True)
    new = model.fc.weight.detach()
    assert new.shape[0] == NUM_CLASSES
    # every remaining input column is one of the original columns, untouched
    matches = (new.T[:, None, :] == old.T[None, :, :]).all(-1).any(-1)
    assert matches.all()


def test_find_classifier_is_the_last_linear_with_one_output_per_class() -> None:
    model = create_model("vgg16_bn", NUM_CLASSES, small_input=True)
    assert find_classifier(model, EXAMPLE) is model.classifier[6]
    with pytest.raises(UserError, match="classifier"):
        find_classifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), EXAMPLE)


def test_global_and_uniform_differ() -> None:
    uniform, global_ = resnet18(), resnet18()
    prune(uniform, "l1", EXAMPLE, ratio=0.5)
    prune(global_, "l1", EXAMPLE, ratio=0.5, global_pruning=True)
    widths_u, widths_g = conv_widths(uniform), conv_widths(global_)
    assert widths_u != widths_g
    # uniform: every layer keeps half of its channels
    assert all(w == c // 2 for w, c in zip(widths_u.values(), conv_widths(resnet18()).values(), strict=False))


def test_global_pruning_keeps_the_floor_of_every_layer() -> None:
    # Torch-Pruning 1.6's own one-shot global pruning cuts layer3 to 7 % here (plan.py).
    parent = conv_widths(resnet18())
    model = resnet18()
    prune(model, "l1", EXAMPLE, ratio=0.85, global_pruning=True, max_pruning_ratio=0.9)
    for name, width in conv_widths(model).items():
        assert width >= math.ceil(0.1 * parent[name]), name
    assert run(model).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("global_pruning", [False, True])
def test_round_to_gives_widths_divisible_by_n(global_pruning: bool) -> None:
    model = create_model("mobilenet_v2", NUM_CLASSES)
    prune(model, "l2", EXAMPLE, ratio=0.6, round_to=8, global_pruning=global_pruning)
    head = find_classifier(model, EXAMPLE)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name != "features.0.0":  # input conv: 3 channels in
            assert m.in_channels % 8 == 0 and m.out_channels % 8 == 0, name
        if isinstance(m, nn.Linear):
            assert m.in_features % 8 == 0, name
            assert m is head or m.out_features % 8 == 0, name
    assert run(model).shape == (2, NUM_CLASSES)


def test_depthwise_convs_stay_depthwise() -> None:
    model = create_model("mobilenet_v2", NUM_CLASSES, small_input=True)
    before = n_params(model)
    prune(model, "fpgm", EXAMPLE, ratio=0.5)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert n_params(model) < before
    assert run(model).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(
    ("name", "small_input"),
    [("se_resnet18", True), ("se_vgg16_bn", True), ("g_ghost_regnetx_tiny", False), ("resnet50", True)],
)
def test_other_architectures_prune_and_run(name: str, small_input: bool) -> None:
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, small_input=small_input)
    before = n_params(model)
    prune(model, "lamp", EXAMPLE, ratio=0.5, global_pruning=True)
    assert n_params(model) < before
    assert run(model).shape == (2, NUM_CLASSES)


def test_se_bottlenecks_keep_their_width() -> None:
    model = create_model("se_resnet18", NUM_CLASSES, small_input=True)
    prune(model, "l1", EXAMPLE, ratio=0.5)
    se = model.layer1[0].bn1.se
    assert se.fc1.in_features == se.fc2.out_features == model.layer1[0].bn1.num_features == 32
    assert se.fc1.out_features == 4  # 64 // 16, as built


def test_ignored_layers_keep_their_outputs() -> None:
    model = resnet18()
    prune(model, "l1", EXAMPLE, ratio=0.5, ignored_layers=[model.layer4])
    assert all(m.out_channels == 512 for m in model.layer4.modules() if isinstance(m, nn.Conv2d))
    assert model.layer3[1].conv1.out_channels == 128


def test_training_flags_are_restored() -> None:
    model = resnet18().train()
    prune(model, "bn", EXAMPLE, ratio=0.3)
    assert all(m.training for m in model.modules())


def test_taylor_without_gradients_is_a_user_error() -> None:
    with pytest.raises(UserError, match="accumulate_gradients"):
        prune(resnet18(), "taylor", EXAMPLE, ratio=0.5)


def test_accumulate_gradients_needs_batches() -> None:
    with pytest.raises(UserError, match="calibration"):
        accumulate_gradients(resnet18(), [])


def test_unknown_criterion_names_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"'magic'.*l1, l2, bn, taylor, fpgm, lamp, random, remotetrimmer"):
        make_importance("magic")


@pytest.mark.parametrize("ratio", [-0.2, 0.95, 1.5])
def test_bad_ratio_is_a_user_error(ratio: float) -> None:
    with pytest.raises(UserError, match="ratio"):
        prune(resnet18(), "l1", EXAMPLE, ratio=ratio)


def test_global_ratio_removes_tied_zero_channels_cheapest_first() -> None:
    # One-shot prune() ranks like the budget search: of channels tied at γ = 0, those that
    # cost the fewest MACs (layer 4 at 1×1 px) go before layer 1's (8×8 px), which come first
    # in Torch-Pruning's group order.
    torch.manual_seed(0)
    model = create_model("resnet18", 10).eval()
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.uniform_(0.5, 1.0)
        model.layer1[0].bn1.weight[:32] = 0
        model.layer4[1].bn1.weight[:256] = 0
    prune(model, "bn", EXAMPLE, ratio=0.02, global_pruning=True)
    assert model.layer1[0].bn1.num_features == 64
    assert model.layer4[1].bn1.num_features < 512


def test_fpgm_prunes_a_model_with_grouped_convolutions():
    # RegNet-style: a 1x1 conv feeding a grouped (not depthwise) 3x3 conv. Torch-Pruning 1.6's
    # FPGM crashed on the grouped conv's input side.
    from rscompress.pruning.budget import prune_to_budget

    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=4),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 5),
    )
    pruned, report = prune_to_budget(model, "fpgm", 16, target_macs=0.5)
    assert abs(report.macs_kept - 0.5) <= 0.01
    assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_taylor_reads_the_gradients_of_the_loss_it_is_given():
    # A detector's calibration loss is its own (engine/detection.py): whatever loss is given,
    # its gradients, taken in eval mode, are the ones summed.
    from rscompress.pruning.importance import accumulate_gradients

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    x = torch.randn(2, 3, 8, 8)
    seen = []

    def loss(m, images, targets):
        seen.append((targets, m.training))
        return m(images).pow(2).sum()

    assert accumulate_gradients(model, [(x, "boxes")], loss) == 2 and seen == [("boxes", False)]
    got = model[0].weight.grad.clone()
    model.zero_grad()
    model.eval()
    model(x).pow(2).sum().backward()
    assert torch.allclose(got, model[0].weight.grad) and got.abs().sum() > 0
