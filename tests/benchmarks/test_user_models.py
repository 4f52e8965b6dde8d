"""The bring-your-own-model harness: the reload check runs in a fresh process and can fail."""

from __future__ import annotations

import pytest
import torch

import rscompress as rsc
from benchmarks.user_models import fresh_reload_diff


@pytest.mark.slow
def test_fresh_process_reload_matches_and_a_changed_model_does_not(tmp_path) -> None:
    torch.manual_seed(0)
    model = rsc.create_model("resnet18", 3, small_input=True).eval()
    example = torch.zeros(1, 3, 16, 16)
    saved = rsc.save(model, tmp_path / "model", example_input=example)
    x = torch.randn(2, 3, 16, 16)
    assert fresh_reload_diff(model, saved, x) <= 1e-5
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # the saved model no longer computes what this one does
    assert fresh_reload_diff(model, saved, x) == pytest.approx(1.0, abs=1e-4)
