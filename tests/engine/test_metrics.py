import pytest
import torch
from torch import nn

from rscompress.engine.metrics import evaluate


class FixedLogits(nn.Module):
    """Returns the logits stored for each input id (x[:, 0] holds the id)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, x):
        return self.table[x[:, 0].long()]


def test_metrics_match_hand_computed_values():
    preds = torch.tensor([0, 0, 1, 1, 2, 0])
    target = torch.tensor([0, 0, 1, 2, 2, 2])
    model = FixedLogits(nn.functional.one_hot(preds, 3).float() * 5)
    x = torch.arange(6).float().unsqueeze(1)
    result = evaluate(model, [(x[:3], target[:3]), (x[3:], target[3:])], num_classes=3)
    assert result.top1 == pytest.approx(4 / 6)
    assert result.per_class_accuracy == pytest.approx([1.0, 1.0, 1 / 3])
    assert result.confusion == [[2, 0, 0], [0, 1, 0], [1, 1, 1]]
    # Cohen's kappa: po = 4/6, pe = (2*3 + 1*2 + 3*1) / 36 = 11/36
    assert result.kappa == pytest.approx((4 / 6 - 11 / 36) / (1 - 11 / 36), abs=1e-6)
    assert result.n_images == 6


def test_evaluate_restores_training_mode():
    model = FixedLogits(torch.eye(2))
    model.train()
    evaluate(model, [(torch.zeros(2, 1), torch.tensor([0, 0]))], num_classes=2)
    assert model.training
