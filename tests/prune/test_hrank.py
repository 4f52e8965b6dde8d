"""HRank: channels ranked by the mean rank of their feature maps on calibration images."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from rscompress.config import FitConfig, PruneConfig
from rscompress.errors import UserError
from rscompress.models import create_model
from rscompress.models.complexity import count_macs_params
from rscompress.pruning.methods.hrank import FeatureRankImportance, average_feature_rank
from rscompress.pruning.select import select_and_prune

IMG = 32


def batches(n: int = 2, size: int = IMG) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, size, size, generator=gen), torch.zeros(4, dtype=torch.long)) for _ in range(n)]


def test_rank_share_is_the_mean_matrix_rank_over_images_divided_by_full_rank() -> None:
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0] = torch.randn(3, 3, 3)  # a random filter on random images: full rank
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    model.train()
    ranks = average_feature_rank(model, batches(size=8))[conv]
    assert ranks.dtype == torch.float64 and ranks.shape == (3,)
    assert ranks[0].item() == pytest.approx(1.0)  # 8 of 8
    assert ranks[1].item() == 0.0 and ranks[2].item() == 0.0  # zero filters: rank 0
    assert model.training  # the mode it came in


def test_channels_whose_maps_have_low_rank_are_pruned_first() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 3, small_input=True).eval()
    conv = model.layer1[0].conv1
    with torch.no_grad():
        conv.weight[:32] = 0.0  # their maps are all zero: rank 0, the lowest there is
    cfg = PruneConfig(method="hrank", ratio=0.5, finetune=FitConfig())
    pruned, details = select_and_prune(
        model, "resnet18", IMG, cfg, train_batches=[], val_batches=[], calibration=batches()
    )
    kept = pruned.layer1[0].conv1.weight
    assert kept.shape[0] == 32 and bool((kept.flatten(1).abs().sum(1) > 0).all())
    assert details["budget"]["ratio"] == 0.5


def test_hrank_hits_a_macs_budget() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 3, small_input=True).eval()
    cfg = PruneConfig(method="hrank", target_macs=0.35, finetune=FitConfig())
    pruned, details = select_and_prune(
        model, "resnet18", IMG, cfg, train_batches=[], val_batches=[], calibration=batches()
    )
    kept = count_macs_params(pruned, IMG)[0] / count_macs_params(model, IMG)[0]
    assert kept == pytest.approx(0.35, rel=0.01)
    assert details["budget"]["macs_kept"] == pytest.approx(kept)


def test_a_group_without_convolution_gets_no_score() -> None:
    importance = FeatureRankImportance({})
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    graph = tp.DependencyGraph().build_dependency(model, torch.zeros(1, 4))
    group = graph.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(8)))
    assert importance(group) is None


def test_no_calibration_images_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"hrank .* calibration images"):
        average_feature_rank(create_model("resnet18", 3, small_input=True), [])
