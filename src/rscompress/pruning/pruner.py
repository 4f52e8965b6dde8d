"""One-shot structured pruning: score the groups, choose the channels, remove them.

``prune`` changes the model in place: the chosen channels are really removed (smaller
weight tensors, fewer MACs), not masked. The pieces are separate modules so that a budget
search can score once and try many ratios (budget.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import Tensor, nn

from rscompress.errors import UserError
from rscompress.models.se import SqueezeExcite
from rscompress.pruning.graph import (
    GroupScore,
    apply_plan,
    build_graph,
    score_groups,
    with_tie_costs,
)
from rscompress.pruning.importance import Importance, make_importance, needs_gradients
from rscompress.pruning.plan import MAX_PRUNING_RATIO, plan_pruning


def find_classifier(model: nn.Module, example_inputs: Tensor) -> nn.Linear:
    """The last ``nn.Linear`` (module order) whose ``out_features`` equals the number of logits.

    The number of logits is read from one eval-mode forward pass (flags restored), so it
    needs no ``num_classes`` argument and cannot disagree with the model.
    """
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            num_classes = model(example_inputs).shape[-1]
    finally:
        for m, flag in training.items():
            m.training = flag
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise UserError(
            f"cannot find the classifier: no nn.Linear with {num_classes} outputs (the model's "
            "logit count); only models ending in a Linear classifier can be pruned"
        )
    return heads[-1]


def prediction_layers(model: nn.Module, example_inputs: Tensor) -> list[nn.Module]:
    """The layers whose outputs are the model's predictions: a classifier's last Linear
    (``find_classifier``), or an FCOS / RetinaNet detector's final classification and box
    convolutions, shared by every FPN level."""
    from torchvision.models.detection import FCOS, RetinaNet

    if isinstance(model, FCOS):
        head = model.head
        return [head.classification_head.cls_logits, head.regression_head.bbox_reg, head.regression_head.bbox_ctrness]
    if isinstance(model, RetinaNet):
        return [model.head.classification_head.cls_logits, model.head.regression_head.bbox_reg]
    return [find_classifier(model, example_inputs)]


def protected_layers(
    model: nn.Module, example_inputs: Tensor, ignored_layers: Iterable[nn.Module] | None = None
) -> list[nn.Module]:
    """Layers whose output channels are never pruned (their inputs still follow their producers).

    * the prediction layers: a classifier's outputs are the classes, a detector's the class
      scores and box coordinates of each location;
    * each SE block's squeeze layer (fc1): its C/16 hidden units cost next to nothing, and
      keeping them keeps the learned attention function; the SE's channel dimension
      (fc1 in, fc2 out) is pruned together with the BN it belongs to;
    * ``ignored_layers`` given by the caller, with all their submodules.
    """
    roots: list[nn.Module] = prediction_layers(model, example_inputs)
    roots += [m.fc1 for m in model.modules() if isinstance(m, SqueezeExcite)]
    roots += list(ignored_layers or [])
    return [sub for layer in roots for sub in layer.modules()]


def check_gradients(model: nn.Module, importance: Importance) -> None:
    """UserError if ``importance`` reads gradients and some prunable layer has none."""
    if not needs_gradients(importance):
        return
    missing = [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.weight.grad is None
    ]
    if missing:
        raise UserError(
            f"the {type(importance).__name__} criterion needs gradients, but {missing[0]} "
            f"(and {len(missing) - 1} more layers) has none: run accumulate_gradients(model, "
            "calibration_batches) first, or pass calibration batches"
        )


def resolve_importance(importance: str | Importance) -> Importance:
    return make_importance(importance) if isinstance(importance, str) else importance


def score_model(
    graph: tp.DependencyGraph,
    importance: str | Importance,
    example_inputs: Tensor,
    ignored_layers: Iterable[nn.Module] | None = None,
) -> list[GroupScore]:
    """Scores of every prunable group of ``graph.model`` (unpruned), protected layers excluded."""
    imp = resolve_importance(importance)
    check_gradients(graph.model, imp)
    protected = protected_layers(graph.model, example_inputs, ignored_layers)
    return score_groups(graph, imp, protected)


def prune(
    model: nn.Module,
    importance: str | Importance,
    example_inputs: Tensor,
    *,
    ratio: float,
    global_pruning: bool = False,
    round_to: int | None = None,
    ignored_layers: Iterable[nn.Module] | None = None,
    max_pruning_ratio: float = MAX_PRUNING_RATIO,
) -> nn.Module:
    """Remove ``ratio`` of the channels of ``model`` in place, one shot; returns ``model``.

    ``importance`` is a criterion name (importance.IMPORTANCES) or a Torch-Pruning
    Importance. ``ratio`` is the fraction of channels removed from every group (uniform) or
    from the whole network ranked by score (``global_pruning``); see plan.py for the rules
    (``max_pruning_ratio`` floor per layer, ``round_to``). The classifier's outputs and SE
    bottlenecks are never pruned (protected_layers). ``example_inputs``: a batch the model
    accepts, e.g. ``torch.zeros(1, 3, 32, 32)``, used to trace it.
    """
    graph = build_graph(model, example_inputs)
    scores = score_model(graph, importance, example_inputs, ignored_layers)
    if global_pruning:
        scores = with_tie_costs(model, example_inputs, scores)
    plan = plan_pruning(
        scores, ratio, global_pruning=global_pruning, round_to=round_to, max_pruning_ratio=max_pruning_ratio
    )
    apply_plan(graph, plan)
    return model
