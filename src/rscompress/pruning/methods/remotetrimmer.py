"""RemoteTrimmer (METHODS.md §1): channel attention pruning (CAP).

The method in three calls:

1. ``parent.fold_se_blocks(se_model, train_batches)`` (every method does it): average every SE block's sigmoid
   attention over the training images (s̄, one value per channel) and fold it into the BN it
   belongs to (γ' = γ·s̄, β' = β·s̄). The result is a plain model without SE blocks that
   computes what the SE model computes with its attention fixed to s̄.
2. Prune it with the ``remotetrimmer`` importance (importance.ChannelAttentionImportance:
   |γ'| averaged over the BNs of each dependency group), e.g.
   ``prune(model, "remotetrimmer", example, ratio=PAPER_RATIO)`` as in the paper, or
   ``prune_to_budget(model, "remotetrimmer", img_size, target_macs=0.1)``.
3. Fine-tune with AML + CE (losses.py, engine/).

The folded model has the module names and classes of the plain architecture: a run dir
records it as ``folded_model_name("se_resnet18") == "resnet18"``, and rebuild.py rebuilds
it from that registry name.

Folding amplifies the differences between channels: a channel the SE keeps turning down
(small s̄) looks less important than its raw |γ| says, which is the point of CAP.
"""

from __future__ import annotations

from rscompress.errors import UserError
from rscompress.pruning.importance import ChannelAttentionImportance, Importance
from rscompress.pruning.methods.base import Criterion, Selection

# The paper's uniform per-layer ratio (≈ 90 % of ResNet-18's MACs and params removed).
PAPER_RATIO = 0.7


def folded_model_name(se_model_name: str) -> str:
    """Registry name of the SE-free architecture a folded ``se_*`` model has (``se_`` dropped)."""
    if not se_model_name.startswith("se_"):
        raise UserError(
            f"remotetrimmer needs an SE parent model (se_resnet18, se_vgg16_bn, ...), got {se_model_name!r}"
        )
    return se_model_name.removeprefix("se_")


class RemoteTrimmer(Criterion):
    """The method's row in methods.METHODS: CAP on the SE-folded parent (fine-tune it with
    ``--loss aml+ce`` for the paper's recipe)."""

    name = "remotetrimmer"
    summary = "RemoteTrimmer's channel attention pruning: |γ|·s̄ with the SE attention folded in"
    folds_foreign_se = True

    def importance(self, s: Selection) -> Importance:
        return ChannelAttentionImportance()
