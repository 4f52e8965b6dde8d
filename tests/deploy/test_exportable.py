"""Adaptive pools whose output size does not divide the input (torchvision VGG at 64 px) export
as exact matrix products; models ONNX can express as they are export unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rscompress.deploy.exportable import MatrixAdaptiveAvgPool2d, adaptive_pool_matrix, exportable_copy
from rscompress.deploy.onnx import check_parity, export_onnx


@pytest.mark.parametrize(("n_in", "n_out"), [(2, 7), (5, 3), (7, 7), (4, 2), (1, 7), (13, 5)])
def test_pool_matrix_is_pytorchs_adaptive_average(n_in, n_out):
    x = torch.randn(2, 3, n_in, n_in + 1)
    expected = nn.functional.adaptive_avg_pool2d(x, (n_out, n_out + 2))
    pool = MatrixAdaptiveAvgPool2d((n_in, n_in + 1), (n_out, n_out + 2))
    assert torch.allclose(pool(x), expected, atol=1e-6, rtol=0)
    assert torch.allclose(adaptive_pool_matrix(n_in, n_out).sum(1), torch.ones(n_out))


def vgg_like_head() -> nn.Module:
    # 16 px → 2×2 map replicated to 7×7 (like VGG-16 at 64 px), then a Linear over 7·7·4.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=8, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((7, None)),
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Linear(196, 5),
    ).eval()


def test_non_dividing_pool_is_rewritten_in_a_copy_and_exports_with_parity(tmp_path):
    model = vgg_like_head()
    copy = exportable_copy(model, torch.zeros(2, 3, 16, 16))
    assert copy is not model and isinstance(model[3], nn.AdaptiveAvgPool2d)  # the caller's model untouched
    assert isinstance(copy[2], MatrixAdaptiveAvgPool2d) and copy[2].rows.shape == (7, 2)
    assert copy[2].cols_t.shape == (2, 2)  # None: width kept
    assert isinstance(copy[3], MatrixAdaptiveAvgPool2d)
    path = export_onnx(model, 16, tmp_path / "m.onnx")
    report = check_parity(model, path, torch.randn(3, 3, 16, 16))
    assert report.max_abs_diff <= 1e-5 and report.top1_agree == 1.0


def test_dividing_pools_need_no_copy():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert exportable_copy(model, torch.zeros(1, 3, 8, 8)) is model
