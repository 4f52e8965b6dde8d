"""RemoteTrimmer: fold averaged SE attention into BN, then prune by |γ·s̄| (CAP)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rscompress.config import FitConfig, PruneConfig
from rscompress.errors import UserError
from rscompress.models import SEBatchNorm2d, create_model
from rscompress.models.se import strip_se_blocks
from rscompress.pruning import apply_architecture, architecture_spec, prune
from rscompress.pruning.budget import prune_to_budget
from rscompress.pruning.methods.remotetrimmer import folded_model_name
from rscompress.pruning.parent import fold_se_blocks
from rscompress.pruning.select import select_and_prune

IMG = 16
NUM_CLASSES = 3


def se_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return create_model("se_resnet18", NUM_CLASSES, small_input=True).eval()


def batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(4, 3, IMG, IMG, generator=gen) for _ in range(n)]
    return [(x, torch.zeros(4, dtype=torch.long)) for x in images]


def fix_attention(se_bn: SEBatchNorm2d, s: torch.Tensor) -> None:
    """Make the SE output exactly ``s`` whatever its input: zero weights, bias = logit(s)."""
    with torch.no_grad():
        se_bn.se.fc2.weight.zero_()
        se_bn.se.fc2.bias.copy_(torch.logit(s))


def test_folded_model_equals_se_model_with_averaged_attention() -> None:
    se_model = se_resnet18()
    reference = copy.deepcopy(se_model)
    attention: dict[str, torch.Tensor] = {}
    folded = fold_se_blocks(se_model, batches())
    assert not any(isinstance(m, SEBatchNorm2d) for m in folded.modules())
    # Reference: the SE model whose every SE outputs its averaged attention s̄ = γ'/γ.
    for name, m in reference.named_modules():
        if isinstance(m, SEBatchNorm2d):
            attention[name] = folded.get_submodule(name).weight.detach() / m.weight.detach()
            fix_attention(m, attention[name])
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.allclose(folded(x), reference(x), atol=1e-5, rtol=0)
    assert all(((s > 0) & (s < 1)).all() for s in attention.values())


def test_prepare_then_prune_removes_channels_and_runs() -> None:
    model = fold_se_blocks(se_resnet18(), batches())
    before = sum(p.numel() for p in model.parameters())
    prune(model, "remotetrimmer", torch.zeros(1, 3, IMG, IMG), ratio=0.7)
    assert sum(p.numel() for p in model.parameters()) < 0.2 * before
    assert model.layer1[0].conv1.out_channels == round(64 * 0.3)
    with torch.no_grad():
        assert model(torch.randn(2, 3, IMG, IMG)).shape == (2, NUM_CLASSES)


def test_pruned_folded_model_rebuilds_as_the_plain_architecture() -> None:
    model = fold_se_blocks(se_resnet18(), batches(1))
    prune(model, "remotetrimmer", torch.zeros(1, 3, IMG, IMG), ratio=0.5)
    rebuilt = create_model(folded_model_name("se_resnet18"), NUM_CLASSES, small_input=True)
    apply_architecture(rebuilt, architecture_spec(model))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))
    with pytest.raises(UserError, match="'resnet18'"):
        folded_model_name("resnet18")


def test_cap_prunes_the_smallest_gamma_times_attention_not_the_smallest_gamma() -> None:
    model = se_resnet18()
    bn = model.layer1[0].bn1  # its group: layer1.0.conv1 out → bn1 → layer1.0.conv2 in; one BN
    gamma = torch.linspace(1.0, 2.0, 64)  # |γ| alone would drop channels 0..31
    s = 0.5 * gamma[0] / gamma * torch.linspace(1.0, 0.1, 64)  # γ·s̄ falls: drop 32..63
    with torch.no_grad():
        bn.weight.copy_(gamma)
    fix_attention(bn, s)
    folded = fold_se_blocks(model, batches(1))
    expected = (gamma * s)[:32]
    assert torch.allclose(folded.layer1[0].bn1.weight.detach(), gamma * s, atol=1e-6)
    prune(folded, "remotetrimmer", torch.zeros(1, 3, IMG, IMG), ratio=0.5)
    kept = folded.layer1[0].bn1.weight.detach()
    assert kept.shape == (32,)
    assert torch.allclose(kept, expected, atol=1e-6)  # the channels with the largest γ·s̄


def test_bn_baseline_on_the_same_model_keeps_the_largest_gamma_instead() -> None:
    model = se_resnet18()
    bn = model.layer1[0].bn1
    gamma = torch.linspace(1.0, 2.0, 64)
    with torch.no_grad():
        bn.weight.copy_(gamma)
    prune(model, "bn", torch.zeros(1, 3, IMG, IMG), ratio=0.5)
    assert torch.allclose(model.layer1[0].bn1.weight.detach(), gamma[32:])


def test_weight_criteria_on_an_se_parent_read_the_weights_as_trained_not_the_folded_ones() -> None:
    # Same γ and attention as the CAP test: folded, bn would rank γ·s̄ and agree with CAP;
    # scored on the stripped SE model it ranks γ as trained and keeps channels 32..63.
    model = se_resnet18()
    bn = model.layer1[0].bn1
    gamma = torch.linspace(1.0, 2.0, 64)
    s = 0.5 * gamma[0] / gamma * torch.linspace(1.0, 0.1, 64)
    with torch.no_grad():
        bn.weight.copy_(gamma)
    fix_attention(bn, s)
    as_trained = strip_se_blocks(copy.deepcopy(model))
    assert not any(isinstance(m, SEBatchNorm2d) for m in as_trained.modules())
    assert torch.equal(as_trained.layer1[0].bn1.weight.detach(), gamma)
    folded = fold_se_blocks(model, batches(1))
    cfg = PruneConfig(method="bn", ratio=0.5, finetune=FitConfig())
    kept = {}
    for name, scorer in (("folded", None), ("as trained", as_trained)):
        pruned, details = select_and_prune(
            folded,
            "resnet18",
            IMG,
            cfg,
            train_batches=[],
            val_batches=[],
            calibration=[],
            weights_as_trained=scorer,
        )
        assert details["scored"] == ("model" if scorer is None else "weights as trained")
        kept[name] = pruned.layer1[0].bn1.weight.detach()
    assert torch.allclose(kept["folded"], (gamma * s)[:32], atol=1e-6)  # = CAP's choice
    assert torch.allclose(kept["as trained"], (gamma * s)[32:], atol=1e-6)  # largest raw γ


def test_a_scorer_of_another_architecture_is_refused() -> None:
    folded = fold_se_blocks(se_resnet18(), batches(1))
    with pytest.raises(ValueError, match=r"scorer must have model's architecture: fc.bias is \(3,\) vs \(5,\)"):
        prune_to_budget(folded, "bn", IMG, ratio=0.5, scorer=create_model("resnet18", 5, small_input=True))


def test_a_model_without_se_blocks_is_a_user_error() -> None:
    with pytest.raises(UserError, match="se_resnet18"):
        fold_se_blocks(create_model("resnet18", NUM_CLASSES), batches())


def test_no_images_is_a_user_error() -> None:
    with pytest.raises(UserError, match="attention"):
        fold_se_blocks(se_resnet18(), [])


def test_sparse_methods_on_an_se_parent_rank_the_gammas_sparse_training_left(monkeypatch) -> None:
    # Sparse training is what sets slim's / L1RR's ranking: the weights as trained must not.
    # As trained, layer1[0].bn1 ranks channels 32..63 highest; sparse training drove exactly
    # those to zero, so they are the first to go.
    from rscompress.pruning.methods import sparse_training

    model = se_resnet18()
    with torch.no_grad():
        model.layer1[0].bn1.weight.copy_(torch.linspace(1.0, 2.0, 64))
    as_trained = strip_se_blocks(copy.deepcopy(model))
    folded = fold_se_blocks(model, batches(1))
    sparse = copy.deepcopy(folded)
    with torch.no_grad():
        sparse.layer1[0].bn1.weight[32:] = 0.0
    monkeypatch.setattr(sparse_training, "_sparse_model", lambda *args: (sparse, {"epochs": 0}))
    for method in ("slim", "l1rr"):
        cfg = PruneConfig(method=method, ratio=0.3, finetune=FitConfig())
        pruned, _ = select_and_prune(
            folded,
            "resnet18",
            IMG,
            cfg,
            train_batches=[],
            val_batches=[],
            calibration=[],
            weights_as_trained=as_trained,
        )
        kept = pruned.layer1[0].bn1.weight.detach()
        assert len(kept) <= 32 and bool((kept != 0).all()), method
