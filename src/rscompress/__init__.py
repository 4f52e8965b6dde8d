"""rscompress: compress CNNs for remote-sensing imagery.

The Python API (``rscompress.python_api``) on your own ``nn.Module`` and data loaders::

    import rscompress as rsc
    result = rsc.prune(model, train_loader, val_loader, example_input=x, method="l1rr", target_macs=0.35)
    rsc.save(result.model, "runs/pruned", example_input=x)
    model = rsc.load("runs/pruned")

Imported on first use, so ``import rscompress`` (and the CLI) stays quick.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "rscompress.python_api",
    "prune": "rscompress.python_api",
    "distill": "rscompress.python_api",
    "evaluate": "rscompress.python_api",
    "export_onnx": "rscompress.python_api",
    "export_int8": "rscompress.python_api",
    "bench": "rscompress.python_api",
    "save": "rscompress.python_api",
    "load": "rscompress.python_api",
    "PruneResult": "rscompress.python_api",
    "TrainResult": "rscompress.python_api",
    "load_weights": "rscompress.models.weights",
    "create_model": "rscompress.models",
    "list_models": "rscompress.models",
}
__all__ = [
    "PruneResult",
    "TrainResult",
    "bench",
    "create_model",
    "distill",
    "evaluate",
    "export_int8",
    "export_onnx",
    "list_models",
    "load",
    "load_weights",
    "prune",
    "save",
    "train",
]

if TYPE_CHECKING:
    from rscompress.models import create_model, list_models
    from rscompress.models.weights import load_weights
    from rscompress.python_api import (
        PruneResult,
        TrainResult,
        bench,
        distill,
        evaluate,
        export_int8,
        export_onnx,
        load,
        prune,
        save,
        train,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rscompress' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
