"""A trained parent made ready for any pruning method, the same way for the CLI and the API.

An SE parent (rscompress's ``SEBatchNorm2d`` blocks) is folded for every method: the SE
attention averaged over calibration images goes into the BNs (RemoteTrimmer's step 3), so
every method prunes and ships the same SE-free architecture and budgets are comparable. The
weight criteria then score the weights the SE model learned (``weights_as_trained``), not the
folded γ·s̄: that amplification is RemoteTrimmer's contribution, which a baseline must not get.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import Tensor, nn

from rscompress.errors import UserError
from rscompress.models.se import se_batchnorms, strip_se_blocks
from rscompress.pruning.methods.remotetrimmer import prepare_remotetrimmer

# Class-name words of SE-style layers other libraries build (torchvision SqueezeExcitation,
# timm SEModule / SqueezeExcite / EffectiveSEModule): named when remotetrimmer cannot fold them.
_FOREIGN_SE_WORDS = ("SqueezeExcit", "SEModule", "SELayer", "EffectiveSE")


def has_se_blocks(model: nn.Module) -> bool:
    return bool(se_batchnorms(model))


def no_foldable_se(model: nn.Module) -> str:
    """Why remotetrimmer cannot take ``model``, naming its own SE-style layers if it has any."""
    foreign = [(name, type(m).__name__) for name, m in model.named_modules()
               if any(word in type(m).__name__ for word in _FOREIGN_SE_WORDS)]
    what = f"this {type(model).__name__}"
    if not foreign:
        return f"method remotetrimmer needs a parent with SE blocks (se_resnet18, ...); {what} has none"
    more = f", and {len(foreign) - 1} more" if len(foreign) > 1 else ""
    return (f"method remotetrimmer folds rscompress's SE blocks (SEBatchNorm2d: se_resnet18, se_vgg16_bn, ...); "
            f"{what}'s own ({foreign[0][1]} at {foreign[0][0]}{more}) cannot be folded yet: "
            "use another method, or an se_* model from rsc.create_model")


def prepare_parent(parent: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]], method: str
                   ) -> tuple[nn.Module, nn.Module | None]:
    """``(model to prune, weights_as_trained)``; ``parent`` itself is folded in place.

    ``calibration``: train batches (images, labels) whose SE attention is averaged.
    ``weights_as_trained`` is None for a parent without SE blocks (the model is its own).
    """
    if not has_se_blocks(parent):
        if method == "remotetrimmer":
            raise UserError(no_foldable_se(parent))
        return parent, None
    weights_as_trained = strip_se_blocks(copy.deepcopy(parent))
    return prepare_remotetrimmer(parent, calibration), weights_as_trained
