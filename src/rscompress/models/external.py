"""torchvision and timm classifiers by name: ``torchvision/NAME`` and ``timm/NAME``.

They join the registry under those prefixes (``create_model("timm/seresnet18", 21)``), so a
run dir can name one in ``config.json`` and rebuild it in a fresh process like any other
model. Always built from scratch: weights come from the user's own files
(``models.weights.load_weights``), never from a download. timm is an optional extra
(``pip install rscompress[timm]``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from rscompress.errors import UserError

TORCHVISION = "torchvision/"
TIMM = "timm/"


def is_external(name: str) -> bool:
    return name.startswith((TORCHVISION, TIMM))


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm models need the timm package: pip install 'rscompress[timm]'") from None
    return timm


def _torchvision_classifiers() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def external_names(filter_text: str = "") -> list[str]:
    """``torchvision/NAME`` for every torchvision classifier, and ``timm/NAME`` for timm's when
    timm is installed, matching ``filter_text``."""
    names = [TORCHVISION + n for n in _torchvision_classifiers()]
    try:
        import timm
    except ImportError:
        pass
    else:
        names += [TIMM + n for n in timm.list_models()]
    return [n for n in names if filter_text.lower() in n.lower()]


def create_external(name: str, num_classes: int, small_input: bool = False, **kwargs) -> nn.Module:
    """A randomly initialised torchvision/timm classifier with ``num_classes`` outputs."""
    if small_input:
        raise UserError(f"small_input reshapes the stem of the registry's own models; {name} keeps its stem")
    if name.startswith(TORCHVISION):
        import torchvision

        arch = name.removeprefix(TORCHVISION)
        if arch not in _torchvision_classifiers():
            raise UserError(f"unknown torchvision classifier {arch!r} (`rscompress models --filter torchvision/`)")
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    timm = _timm()
    arch = name.removeprefix(TIMM)
    if not timm.is_model(arch):
        raise UserError(f"unknown timm model {arch!r} (`rscompress models --filter timm/`)")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def _layout(model: nn.Module) -> list[tuple[str, str]]:
    """Every submodule's name and class: the architecture, whatever its widths."""
    return [(name, type(m).__name__) for name, m in model.named_modules()]


def identify_external(model: nn.Module, num_classes: int) -> str | None:
    """The torchvision/timm name whose builder makes ``model``'s architecture, or None.

    timm models say their name (``pretrained_cfg``); a torchvision model is matched against
    the builders of its class by module layout (names and types, not widths, so a pruned
    model is still recognised; where it has an Identity the candidate gets one too). Builders
    whose layouts agree (resnet50, wide_resnet50_2, resnext50_32x4d) give the first: the
    per-layer shapes a run dir records rebuild the right widths and groups from any of them.
    """
    candidates: list[tuple[str, Callable[[], nn.Module]]] = []
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch and type(model).__module__.startswith("timm."):
        candidates.append((TIMM + arch, lambda: create_external(TIMM + arch, num_classes)))
    elif type(model).__module__.startswith("torchvision.models"):
        import torchvision

        for tv_name in _torchvision_classifiers():
            builder = torchvision.models.get_model_builder(tv_name)
            if getattr(builder, "__module__", "") != type(model).__module__:
                continue
            candidates.append((TORCHVISION + tv_name, partial(create_external, TORCHVISION + tv_name, num_classes)))
    layout = _layout(model)
    # Blocks folded away (another library's SE block under remotetrimmer) are Identities here.
    identity = [n for n, m in model.named_modules() if isinstance(m, nn.Identity) and n]
    for name, build in candidates:
        candidate = build()
        modules = dict(candidate.named_modules())
        for n in identity:
            if n in modules:
                parent, _, child = n.rpartition(".")
                setattr(candidate.get_submodule(parent), child, nn.Identity())
        if _layout(candidate) == layout:
            return name
    return None
