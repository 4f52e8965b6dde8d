"""Where the training and evaluation loops run: ``--device auto|cpu|cuda|cuda:N``.

Models live on the CPU between steps (pruning's dependency graphs, MACs counting, weight
files and ONNX export all work there); ``fit``, ``evaluate``, a distillation teacher, the NAS
search and sparse training move to the resolved device for their loops. "auto" is CUDA when
torch sees a GPU, else the CPU.
Under torchrun, "auto" and "cuda" mean this process's GPU, ``cuda:$LOCAL_RANK``.
"""

from __future__ import annotations

import os
import re

import torch

from rscompress.errors import UserError

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(spec: str) -> torch.device:
    """The ``torch.device`` that ``spec`` names here; a ``UserError`` if it is not usable."""
    if not re.match(DEVICE_PATTERN, spec):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            f"--device {spec}: torch sees no CUDA device here (torch.cuda.is_available() is False); "
            "use --device cpu or auto"
        )
    index = int(spec.split(":")[1]) if ":" in spec else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: cuda:{index} does not exist, torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
