"""Model registry: ``create_model(name, num_classes, **kw)`` like timm.

Each architecture module registers its builders with ``@register_model``; builders take
``num_classes`` plus keyword options and return a plain ``nn.Module``. torchvision and timm
classifiers are there too, as ``torchvision/NAME`` and ``timm/NAME`` (models/external.py).

Every model made here remembers its name and options (``built_as``), pruned copies included,
so ``rscompress.save`` can write a config.json that rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

from torch import nn

from rscompress.errors import UserError
from rscompress.models.external import create_external, is_external

ModelBuilder = Callable[..., nn.Module]
Task = Literal["classification", "detection"]
_REGISTRY: dict[str, ModelBuilder] = {}
_TASKS: dict[str, Task] = {}


def register_model(name: str, task: Task = "classification") -> Callable[[ModelBuilder], ModelBuilder]:
    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = builder
        _TASKS[name] = task
        return builder

    return decorate


def model_task(name: str) -> Task:
    """What a registered model does: classification (torchvision/timm models too) or detection."""
    return _TASKS.get(name, "classification")


_BUILT_AS = "_rscompress_built_as"


def list_models(filter_text: str = "", task: Task | None = None) -> list[str]:
    """The registry's own models matching ``filter_text`` (not the torchvision/timm ones), of
    ``task`` when given."""
    return sorted(n for n in _REGISTRY if filter_text.lower() in n.lower() and task in (None, _TASKS[n]))


def is_known_model(name: str) -> bool:
    return name in _REGISTRY or is_external(name)


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    if not is_known_model(name):
        known = ", ".join(list_models())
        raise UserError(f"unknown model {name!r}; known models: {known}, torchvision/NAME, timm/NAME")
    # A detector's classes are the objects alone (FCOS has no background class): one is a task.
    if num_classes < (1 if model_task(name) == "detection" else 2):
        raise UserError(f"num_classes must be >= {1 if model_task(name) == 'detection' else 2}, got {num_classes}")
    builder = partial(create_external, name) if is_external(name) else _REGISTRY[name]
    try:
        model = builder(num_classes=num_classes, **kwargs)
    except TypeError as err:
        # An option the model has not (a run's config.json edited, or from another version) is
        # the user's input; any other TypeError is a bug and keeps its traceback.
        if "unexpected keyword argument" not in str(err):
            raise
        raise UserError(f"model {name} takes no option {err.args[0].split('argument ')[-1]}") from None
    setattr(model, _BUILT_AS, (name, dict(kwargs)))
    return model


def built_as(model: nn.Module) -> tuple[str, dict] | None:
    """``(name, kwargs)`` of the create_model call that made ``model`` (or the model it was
    pruned from), or None for a model made elsewhere."""
    return getattr(model, _BUILT_AS, None)
