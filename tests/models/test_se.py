"""SE blocks tied to BNs: placement, attention averaging, folding into BN (RemoteTrimmer)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from rscompress.models import (
    SEBatchNorm2d,
    SqueezeExcite,
    add_se_blocks,
    average_se_attention,
    create_model,
    fold_se_into_bn,
)


class _FixedScale(nn.Module):
    """What an SE block computes once its attention is frozen to s̄."""

    def __init__(self, s: Tensor) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: Tensor) -> Tensor:
        return x * self.s[None, :, None, None]


def _se_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, SEBatchNorm2d)]


def _randomize_bns(model: nn.Module) -> None:
    # Non-trivial γ, β and running statistics, so folding is tested on more than 1s and 0s.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_se_resnet18_placement() -> None:
    model = create_model("se_resnet18", 10)
    names = _se_names(model)
    # stem + 2 per BasicBlock x 8 blocks; the 3 downsample BNs stay plain
    assert len(names) == 1 + 2 * 8
    assert names[0] == "bn1"
    assert "layer1.0.bn1" in names and "layer4.1.bn2" in names
    plain = [n for n, m in model.named_modules() if type(m) is nn.BatchNorm2d]
    assert plain == ["layer2.0.downsample.1", "layer3.0.downsample.1", "layer4.0.downsample.1"]
    assert len([m for m in model.modules() if isinstance(m, SqueezeExcite)]) == 17


def test_se_resnet50_and_vgg_placement() -> None:
    # stem + 3 per Bottleneck x 16 blocks; VGG-16: one per conv of features
    assert len(_se_names(create_model("se_resnet50", 10, small_input=True))) == 1 + 3 * 16
    vgg = create_model("se_vgg16_bn", 10, small_input=True)
    assert len(_se_names(vgg)) == 13
    # each SE BN sits right after a conv: features.<i> is the BN of conv features.<i-1>
    conv_before = [vgg.features[int(n.split(".")[1]) - 1] for n in _se_names(vgg)]
    assert all(isinstance(m, nn.Conv2d) for m in conv_before)


def test_se_hidden_width_is_channels_over_16() -> None:
    se = SqueezeExcite(64)
    assert (se.fc1.in_features, se.fc1.out_features) == (64, 4)
    assert (se.fc2.in_features, se.fc2.out_features) == (4, 64)
    assert SqueezeExcite(8).fc1.out_features == 1


def test_add_se_blocks_keeps_bn_state_and_is_idempotent() -> None:
    model = create_model("resnet18", 10, small_input=True)
    _randomize_bns(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_se_blocks(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert len(_se_names(add_se_blocks(model))) == 17


def test_average_se_attention_averages_over_images() -> None:
    torch.manual_seed(0)
    model = create_model("se_resnet18", 10, small_input=True)
    model.train()
    images = torch.randn(5, 3, 16, 16)
    # uneven batches, DataLoader-style (images, labels) tuples
    att = average_se_attention(model, [(images[:3], None), (images[3:], None)])
    assert model.training and all(m.training for m in model.modules())
    assert list(att) == _se_names(model)
    assert att["layer2.1.bn2"].shape == (128,)
    assert all(((a > 0) & (a < 1)).all() for a in att.values())
    whole = average_se_attention(model, [images])
    assert all(torch.allclose(att[k], whole[k], atol=1e-6) for k in att)


def test_average_se_attention_needs_images_and_se_layers() -> None:
    with pytest.raises(ValueError, match="no images"):
        average_se_attention(create_model("se_resnet18", 10), [])
    with pytest.raises(ValueError, match="no SEBatchNorm2d"):
        average_se_attention(create_model("resnet18", 10), [torch.randn(1, 3, 16, 16)])


def test_folded_model_equals_se_model_with_fixed_attention() -> None:
    torch.manual_seed(0)
    se_model = create_model("se_resnet18", 10, small_input=True)
    _randomize_bns(se_model)
    se_model.eval()
    att = average_se_attention(se_model, [torch.randn(4, 3, 32, 32)])

    fixed = copy.deepcopy(se_model)
    for name, m in fixed.named_modules():
        if isinstance(m, SEBatchNorm2d):
            m.se = _FixedScale(att[name])
    folded = fold_se_into_bn(copy.deepcopy(se_model), att)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = fixed(x), folded(x)
    assert (expected - got).abs().max().item() <= 1e-5
    assert not any(isinstance(m, (SqueezeExcite, SEBatchNorm2d)) for m in folded.modules())

    plain = create_model("resnet18", 10, small_input=True)
    n_params = sum(p.numel() for p in folded.parameters())
    assert n_params == sum(p.numel() for p in plain.parameters())
    # same names and shapes as the plain model: its weights load strictly into resnet18
    assert {k: v.shape for k, v in folded.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


def test_fold_rejects_attention_that_does_not_match() -> None:
    model = create_model("se_resnet18", 10)
    att = {name: torch.ones(m.num_features) for name, m in model.named_modules() if isinstance(m, SEBatchNorm2d)}
    with pytest.raises(ValueError, match="missing"):
        fold_se_into_bn(model, {k: v for k, v in att.items() if k != "bn1"})
    with pytest.raises(ValueError, match="bn1"):
        fold_se_into_bn(model, {**att, "bn1": torch.ones(3)})
