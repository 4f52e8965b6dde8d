"""The registered architectures: shapes, gradients, parameter counts, Torch-Pruning tracing."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pytest
import torch
import torch_pruning as tp
from torch import nn

from rscompress.errors import UserError
from rscompress.models import create_model, list_models

# Heavy models are exercised at 32 px only, to keep the suite fast on 2 CPU cores.
LIGHT = ("resnet18", "resnet34", "mobilenet_v2", "se_resnet18", "se_resnet34")
HEAVY = ("resnet50", "vgg16_bn", "se_resnet50", "se_vgg16_bn")
OURS = LIGHT + HEAVY

# (name, small_input) pairs. The default se_vgg16_bn (134 M parameters, seconds to build
# and backprop) is left out: it is add_se_blocks on the default vgg16_bn, whose head is
# covered by vgg16_bn and whose SE blocks are covered by se_vgg16_bn(small_input=True).
VARIANTS = [(n, s) for n in OURS for s in (False, True) if (n, s) != ("se_vgg16_bn", False)]

FORWARD_CASES = [(name, size, small) for name, small in VARIANTS for size in ((32, 64) if name in LIGHT else (32,))]


NUM_CLASSES = 30  # also the class count of the vgg16_bn parameter figure we rely on


@cache
def _model(name: str, small_input: bool) -> nn.Module:
    # Built once per module: building VGG-16-BN alone takes seconds (random init of 134 M
    # parameters), and the tests here only read the models or leave gradients behind.
    torch.manual_seed(0)
    return create_model(name, NUM_CLASSES, small_input=small_input)


@pytest.fixture(scope="module", autouse=True)
def _free_cached_models() -> Iterator[None]:
    yield
    _model.cache_clear()


def test_all_our_models_are_registered() -> None:
    assert set(OURS) <= set(list_models())


@pytest.mark.parametrize(("name", "size", "small_input"), FORWARD_CASES)
def test_forward_backward(name: str, size: int, small_input: bool) -> None:
    model = _model(name, small_input)
    model.train()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, NUM_CLASSES)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=True)  # the cached model keeps no gradient memory
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "num_classes", "expected"),
    [
        # torchvision's published counts for the 1000-class models
        ("resnet18", 1000, 11_689_512),
        ("resnet34", 1000, 21_797_672),
        ("resnet50", 1000, 25_557_032),
        ("mobilenet_v2", 1000, 3_504_872),
        # 138,365,992 - 4096*1000 - 1000 + 4096*30 + 30: the "134.4 M" of METHODS.md §4
        ("vgg16_bn", 30, 134_391_902),
    ],
)
def test_default_param_counts_match_torchvision(name: str, num_classes: int, expected: int) -> None:
    model = _model(name, False) if num_classes == NUM_CLASSES else create_model(name, num_classes)
    assert _n_params(model) == expected


def test_resnet_small_input_stem() -> None:
    model = create_model("resnet18", 10, small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    # 64 px in, layer4 at 8x8 (total stride 8) instead of 2x2
    features = nn.Sequential(*list(model.children())[:-2])
    assert features(torch.randn(1, 3, 64, 64)).shape[-2:] == (8, 8)


def test_mobilenet_small_input_first_conv_stride_1() -> None:
    model = create_model("mobilenet_v2", 10, small_input=True)
    assert model.features[0][0].stride == (1, 1)
    assert model.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (2, 2)


def test_vgg_small_input_head() -> None:
    model = _model("vgg16_bn", True)
    default = _model("vgg16_bn", False)
    assert [type(m) for m in model.features] == [type(m) for m in default.features]
    assert model.avgpool.output_size == 1
    assert [type(m) for m in model.classifier] == [type(m) for m in default.classifier]
    widths = [(m.in_features, m.out_features) for m in model.classifier if isinstance(m, nn.Linear)]
    assert widths == [(512, 512), (512, 512), (512, NUM_CLASSES)]
    assert model.classifier[6].out_features == NUM_CLASSES
    head_params = 2 * (512 * 512 + 512) + 512 * NUM_CLASSES + NUM_CLASSES
    assert _n_params(model) == _n_params(default.features) + head_params
    # built via the meta device: every tensor must be real and initialised as torchvision does
    state = create_model("vgg16_bn", NUM_CLASSES, small_input=True).state_dict()
    assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in state.values())
    assert torch.equal(state["features.1.running_var"], torch.ones(64))
    assert int(state["features.1.num_batches_tracked"]) == 0
    assert 0.005 < float(state["classifier.0.weight"].std()) < 0.015
    conv_std = float(state["features.0.weight"].std())  # kaiming normal, fan_out = 64 * 9
    assert abs(conv_std - (2 / (64 * 9)) ** 0.5) < 0.01


def test_unknown_model_is_a_user_error() -> None:
    with pytest.raises(UserError, match="resnet19"):
        create_model("resnet19", 10)


def test_too_few_classes_is_a_user_error() -> None:
    with pytest.raises(UserError, match="num_classes"):
        create_model("resnet18", 1)


@pytest.mark.parametrize(("name", "small_input"), VARIANTS)
def test_torch_pruning_traces_every_model(name: str, small_input: bool) -> None:
    model = _model(name, small_input)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    assert len(list(graph.get_all_groups())) > 0
