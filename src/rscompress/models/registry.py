"""Model registry: ``create_model(name, num_classes, **kw)`` like timm.

Each architecture module registers its builders with ``@register_model``; builders take
``num_classes`` plus keyword options and return a plain ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from rscompress.errors import UserError

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models(filter_text: str = "") -> list[str]:
    return sorted(n for n in _REGISTRY if filter_text.lower() in n.lower())


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        known = ", ".join(list_models())
        raise UserError(f"unknown model {name!r}; known models: {known}")
    if num_classes < 2:
        raise UserError(f"num_classes must be >= 2, got {num_classes}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)
