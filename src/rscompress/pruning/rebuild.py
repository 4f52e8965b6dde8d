"""Rebuild a pruned model without pickle: a JSON shape spec + the registry's fresh model.

A run dir stores a pruned model as ``config.json`` (model name + ``architecture_spec``) and
``model.safetensors``. To load it: ``create_model(name, ...)`` builds the unpruned
architecture, ``apply_architecture`` gives every layer the recorded shapes, and
``load_state_dict(weights, strict=True)`` fills it. Nothing is unpickled (DESIGN.md).

Structured pruning changes only channel counts, and only in these layer types, so they are
all a spec records: convolutions (in/out channels, groups), BatchNorms (num_features) and
Linear layers (in/out features). Everything else — kernel sizes, strides, padding,
dilation, bias flags, SE blocks (two Linear layers each), the G-Ghost split point (read from
layer shapes at run time) — comes from the fresh model. Layers are resized in place (new
parameters and buffers of the recorded shapes) rather than swapped for new objects, so
subclasses like ``SEBatchNorm2d`` keep their type and their child modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from rscompress.errors import UserError

SPEC_VERSION = 1

_CONV = _ConvNd
_NORM = _BatchNorm
_FIELDS: dict[type, tuple[str, ...]] = {
    _CONV: ("in_channels", "out_channels", "groups"),
    _NORM: ("num_features",),
    nn.Linear: ("in_features", "out_features"),
}


def _kind(module: nn.Module) -> type | None:
    return next((kind for kind in _FIELDS if isinstance(module, kind)), None)


def _check_supported(model: nn.Module) -> None:
    """ValueError for a layer with its own parameters that no spec field describes.

    Such a layer (LayerNorm, GroupNorm, PReLU, ...) could have been pruned too, and a spec
    silent about it would rebuild the wrong model; better to fail when the spec is written.
    """
    for name, module in model.named_modules():
        unknown = _kind(module) is None and any(True for _ in module.parameters(recurse=False))
        if unknown or getattr(module, "transposed", False):
            raise ValueError(
                f"architecture_spec cannot describe {name} ({type(module).__name__}): only "
                "Conv (not transposed), BatchNorm and Linear layers are recorded"
            )


def architecture_spec(model: nn.Module) -> dict[str, Any]:
    """JSON-able shapes of every prunable layer: ``{"version": 1, "layers": {name: {...}}}``.

    Each entry holds the layer's class name and its shape fields (see the module docstring).
    """
    _check_supported(model)
    layers = {}
    for name, module in model.named_modules():
        kind = _kind(module)
        if kind is not None:
            shape = {f: int(getattr(module, f)) for f in _FIELDS[kind]}
            layers[name] = {"type": type(module).__name__, **shape}
    # Where the model has an Identity: a fresh model may have a block there that was folded
    # away (another library's SE block under remotetrimmer, pruning.parent.fold_foreign_se_layers).
    identity = [name for name, module in model.named_modules() if isinstance(module, nn.Identity) and name]
    return {"version": SPEC_VERSION, "layers": layers, **({"identity": identity} if identity else {})}


def _shape(kind: type, name: str, entry: Any, module: nn.Module) -> tuple[int, ...]:
    """The entry's shape fields for ``kind``, validated; UserError naming the layer if bad."""
    if not isinstance(entry, dict) or entry.get("type") != type(module).__name__:
        found = entry.get("type") if isinstance(entry, dict) else entry
        raise UserError(
            f"architecture spec: layer {name!r} is a {found!r} in the spec but a {type(module).__name__} in the model"
        )
    shape: list[int] = []
    for field in _FIELDS[kind]:
        value = entry.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"architecture spec: layer {name!r} needs a positive integer {field}, got {value!r}")
        shape.append(value)
    if kind is _CONV and (shape[0] % shape[2] or shape[1] % shape[2]):
        raise UserError(
            f"architecture spec: layer {name!r} has {shape[0]} in / {shape[1]} out channels, "
            f"not divisible into {shape[2]} groups"
        )
    return tuple(shape)


def _resize_conv(conv: _ConvNd, cin: int, cout: int, groups: int) -> None:
    conv.in_channels, conv.out_channels, conv.groups = cin, cout, groups
    # weight layout of a (non-transposed) conv: (out, in / groups, *kernel)
    conv.weight = nn.Parameter(conv.weight.new_empty(cout, cin // groups, *conv.kernel_size))
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.new_empty(cout))
    conv.reset_parameters()


def _resize_norm(bn: _BatchNorm, n: int) -> None:
    bn.num_features = n
    if bn.affine:
        bn.weight = nn.Parameter(bn.weight.new_empty(n))
        bn.bias = nn.Parameter(bn.bias.new_empty(n))
    if bn.track_running_stats:
        # _NormBase registers both buffers exactly when it tracks running statistics.
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean = bn.running_mean.new_empty(n)
        bn.running_var = bn.running_var.new_empty(n)
    bn.reset_parameters()


def _resize_linear(linear: nn.Linear, cin: int, cout: int) -> None:
    linear.in_features, linear.out_features = cin, cout
    linear.weight = nn.Parameter(linear.weight.new_empty(cout, cin))
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.new_empty(cout))
    linear.reset_parameters()


_RESIZE: dict[type, Callable[..., None]] = {_CONV: _resize_conv, _NORM: _resize_norm, nn.Linear: _resize_linear}


@torch.no_grad()
def apply_architecture(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Give a freshly created (unpruned) ``model`` the layer shapes of ``spec``, in place.

    ``spec`` comes from ``architecture_spec`` (possibly through JSON). Parameters are newly
    initialised: load the pruned weights next. The spec must describe exactly the model's
    Conv/BatchNorm/Linear layers (same names and classes), i.e. come from the same registry
    model; anything else is a UserError naming the first mismatch, and the model is unchanged.
    The spec's ``identity`` modules (blocks folded away) become ``nn.Identity`` first.
    """
    layers = spec.get("layers") if isinstance(spec, dict) else None
    if not isinstance(layers, dict) or spec.get("version") != SPEC_VERSION:
        raise UserError(
            f"not an architecture spec of version {SPEC_VERSION} (expected {{'version': 1, 'layers': {{...}}}})"
        )
    identity = spec.get("identity", [])
    modules = dict(model.named_modules())
    if not isinstance(identity, list):
        raise UserError(f"architecture spec: identity must be a list of module names, got {identity!r}")
    if absent := [name for name in identity if name not in modules]:
        raise UserError(f"architecture spec: identity layers {absent[:3]} are not modules of this model")

    def folded_away(name: str) -> bool:
        return any(name == i or name.startswith(i + ".") for i in identity)

    model_layers = {
        name: (kind, m) for name, m in modules.items() if (kind := _kind(m)) is not None and not folded_away(name)
    }
    missing = sorted(set(model_layers) - set(layers))
    unknown = sorted(set(layers) - set(model_layers))
    if missing or unknown:
        raise UserError(
            "architecture spec does not fit this model: "
            f"{len(missing)} layers not in the spec {missing[:3]}, "
            f"{len(unknown)} spec layers not in the model {unknown[:3]}"
        )
    # Validate everything before resizing anything: a bad spec leaves the model untouched.
    shapes = {name: _shape(kind, name, layers[name], m) for name, (kind, m) in model_layers.items()}
    for name in identity:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    for name, (kind, module) in model_layers.items():
        _RESIZE[kind](module, *shapes[name])
    return model
