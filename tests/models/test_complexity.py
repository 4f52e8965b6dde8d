"""count_macs_params: the project's single MACs/params counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rscompress.errors import UserError
from rscompress.models import count_macs_params, create_model

_GRAD_SEEN: list[bool] = []  # module-level: the counter runs a deep copy of the model


class _RecordsGradMode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _GRAD_SEEN.append(torch.is_grad_enabled())
        return self.conv(x)


def test_counts_match_parameters_and_scale_with_area() -> None:
    model = create_model("resnet18", 10, small_input=True)
    macs32, params = count_macs_params(model, 32)
    macs64, _ = count_macs_params(model, 64)
    assert isinstance(macs32, int) and isinstance(params, int)
    assert params == sum(p.numel() for p in model.parameters())
    # stride-1 stem: every layer's output area grows 4x except the 1x1 head
    assert 3.9 < macs64 / macs32 < 4.1


def test_conv_macs_are_multiply_accumulates() -> None:
    model = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    macs, params = count_macs_params(model, 16)
    assert macs == 3 * 8 * 9 * 16 * 16
    assert params == 3 * 8 * 9


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_training_flags_are_restored(mode: str) -> None:
    model = create_model("resnet18", 10, small_input=True)
    model.train(mode != "eval")
    if mode == "mixed":
        model.layer1.eval()
    before = {name: m.training for name, m in model.named_modules()}
    count_macs_params(model, 32)
    assert {name: m.training for name, m in model.named_modules()} == before


def test_runs_without_grad() -> None:
    _GRAD_SEEN.clear()
    count_macs_params(_RecordsGradMode(), 16)
    assert _GRAD_SEEN == [False]


def test_bad_img_size_is_a_user_error() -> None:
    with pytest.raises(UserError, match="img_size"):
        count_macs_params(nn.Conv2d(3, 4, 3), 0)
