"""ONNX export with a parity check: a model file is only trusted once it gives the same logits.

``export_onnx`` writes the graph (dynamic batch axis, input ``images``, output ``logits``);
``check_parity`` runs it in ONNX Runtime next to PyTorch on the same images and raises
``ParityError`` if they differ; ``export_run`` does both for a run dir on real images of its
test split (or of another folder with the same classes), so ``RUN/model.onnx`` is never a
file that failed its check.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from rscompress import __version__
from rscompress.artifacts import RunConfig, RunDir
from rscompress.config import DataConfig
from rscompress.data.loader import BatchLoader
from rscompress.data.prepare import prepare_data
from rscompress.deploy.box_parity import BoxParity, check_box_parity
from rscompress.deploy.exportable import exportable_copy
from rscompress.deploy.runtime import INPUT_NAME, OUTPUT_NAME, cpu_session
from rscompress.errors import UserError
from rscompress.io_utils import ONNX_STAGING, fsync_dir, staging_dir, write_atomic
from rscompress.models.detection import deployable
from rscompress.models.registry import model_task

ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4


class ParityError(UserError):
    """ONNX Runtime's logits differ from PyTorch's: the exported file must not be used."""

    def __init__(self, message: str, report: ParityReport):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float  # largest |logit_onnx - logit_torch| over all images and batch sizes
    top1_agree: float  # fraction of images whose argmax agrees, worst over the batch sizes
    n_images: int
    batch_sizes: tuple[int, ...]  # ONNX Runtime batch sizes tried (1 and the full batch)
    # The largest difference of an image's logits over max(1, its largest |PyTorch logit|):
    # float32 rounding grows with the logits' size, so an image is held to atol on logits of
    # order 1 and to atol × their size on larger ones.
    max_scaled_diff: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_scaled_diff <= self.atol and self.top1_agree == 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "batch_sizes": list(self.batch_sizes)}


@dataclass(frozen=True)
class ExportReport:
    path: Path
    size_bytes: int
    opset: int
    parity: ParityReport
    parity_images: str  # where the parity images came from, in words
    box_parity: BoxParity | None = None  # a detector's: its decoded boxes against PyTorch's

    def to_dict(self) -> dict[str, Any]:
        # Flat: max_abs_diff, top1_agree, n_images, batch_sizes, atol sit next to the file's facts.
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "opset": self.opset,
            **self.parity.to_dict(),
            "parity_images": self.parity_images,
            **({"box_parity": self.box_parity.to_dict()} if self.box_parity is not None else {}),
        }


def _example_input(model: nn.Module, img_size: int, batch: int) -> torch.Tensor:
    param = next(model.parameters(), None)
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    return x if param is None else x.to(param.device, param.dtype)


def _in_eval_mode(model: nn.Module) -> dict[nn.Module, bool]:
    """Put ``model`` in eval mode; returns every module's flag so the caller can put it back."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    return flags


def _restore_modes(flags: Mapping[nn.Module, bool]) -> None:
    for module, flag in flags.items():
        module.training = flag


def export_onnx(
    model: nn.Module,
    img_size: int,
    path: Path | str,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` (eval mode) as ONNX at ``path``, checked by ``onnx.checker``; returns path.

    Input ``images`` (N×3×img_size×img_size float32), output ``logits`` (N×classes), N dynamic.
    ``metadata`` goes into the file's metadata_props, so a deployed file carries what it needs
    (normalisation, class names) without the run dir. The file appears only once complete and
    checked: a failed export leaves whatever was at ``path`` before.
    """
    path = Path(path)
    # Traced with batch 2, not 1: a batch-1 trace can bake size-1 shapes into reshapes.
    example = _example_input(model, img_size, batch=2)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs
            # onnxscript (not a dependency); it is still the one that works here.
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
            torch.onnx.export(
                exportable_copy(model, example),
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        if metadata:
            proto = onnx.load(str(tmp))
            onnx.helper.set_model_props(proto, dict(metadata))
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)

    flags = _in_eval_mode(model)
    try:
        write_atomic(path, write)
    finally:
        _restore_modes(flags)
    return path


def check_parity(
    model: nn.Module, onnx_path: Path | str, images: torch.Tensor, atol: float = DEFAULT_ATOL
) -> ParityReport:
    """Compare ONNX Runtime with PyTorch (eval mode) on ``images``; ``ParityError`` if they differ.

    ONNX Runtime runs the images one at a time and all together, which also proves that the
    batch axis is really dynamic. Any top-1 disagreement fails, as does a logit difference
    above ``atol`` times the image's largest |logit| (when that exceeds 1).
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty N×3×H×W batch, got shape {tuple(images.shape)}")
    flags = _in_eval_mode(model)
    try:
        param = next(model.parameters(), None)
        x = images if param is None else images.to(param.device, param.dtype)
        with torch.inference_mode():
            ref = model(x).float().cpu().numpy()
    finally:
        _restore_modes(flags)
    session = cpu_session(onnx_path, threads=torch.get_num_threads())
    feed = images.detach().cpu().float().numpy()
    n = feed.shape[0]
    outputs = {
        1: np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: feed[i : i + 1]})[0] for i in range(n)]),
        n: session.run([OUTPUT_NAME], {INPUT_NAME: feed})[0],
    }
    top1 = ref.argmax(axis=1)
    per_image = [np.abs(out - ref).max(axis=1) for out in outputs.values()]  # largest |diff| per image
    scale = np.maximum(1.0, np.abs(ref).max(axis=1))
    report = ParityReport(
        max_abs_diff=max(float(d.max()) for d in per_image),
        top1_agree=min(float((out.argmax(axis=1) == top1).mean()) for out in outputs.values()),
        n_images=n,
        batch_sizes=tuple(outputs),
        max_scaled_diff=max(float((d / scale).max()) for d in per_image),
        atol=atol,
    )
    if not report.ok:
        # A NaN difference says little by itself: which side made non-finite logits does.
        bad = {
            "PyTorch": int((~np.isfinite(ref)).sum()),
            "ONNX Runtime": max(int((~np.isfinite(out)).sum()) for out in outputs.values()),
        }
        non_finite = (
            "; non-finite logits: " + ", ".join(f"{k} {v} of {ref.size}" for k, v in bad.items())
            if any(bad.values())
            else ""
        )
        raise ParityError(
            f"ONNX parity failed for {onnx_path}: max |logit difference| {report.max_abs_diff:.3g} "
            f"({report.max_scaled_diff:.3g} of the image's largest |logit|, atol {atol:g}), "
            f"top-1 agreement {report.top1_agree:.1%} over {n} images "
            f"at batch sizes {', '.join(map(str, report.batch_sizes))}{non_finite}",
            report,
        )
    return report


def spread_rows(indices: np.ndarray, n: int) -> np.ndarray:
    """``n`` evenly spaced entries: rows are in class-folder order, so every class gets a share."""
    if indices.size <= n:
        return indices
    return indices[np.linspace(0, indices.size - 1, n).round().astype(np.int64)]


def _no_data_error(run: RunDir, what: str) -> UserError:
    return UserError(
        f"cannot check ONNX parity of {run.path} on its test images: {what}; pass --parity-data "
        "FOLDER (a class-folder tree with the run's classes) to check on those images instead"
    )


def parity_images(
    run: RunDir, config: RunConfig, n_images: int, parity_data: Path | None = None, *, resplit: bool = False
) -> tuple[torch.Tensor, str]:
    """Up to ``n_images`` real images, normalised as the run was trained, and where they came from.

    From the run's test split, or with ``parity_data`` from every image of that folder (its
    classes must be among the run's). The data folder missing is a ``UserError``, never a
    silent switch to random inputs: parity on noise can hide what real images would show.
    ``resplit``: the run's split.json is gone, split its data anew (RunDir.split_for).
    """
    if n_images < 1:
        raise UserError(f"n_images must be at least 1, got {n_images}")
    if resplit and parity_data is not None:
        raise UserError("--resplit splits the run's own data; --parity-data checks on every image of a folder")
    if not config.data.get("path"):
        raise _no_data_error(run, "its config.json names no data folder")
    if model_task(config.model) == "detection":
        return _detection_parity_images(run, config, n_images, parity_data)
    data_cfg = DataConfig.model_validate(config.data)
    if parity_data is None:
        for folder in (data_cfg.path, data_cfg.test_path):
            if folder is not None and not Path(folder).is_dir():
                raise _no_data_error(run, f"its data folder {folder} is not there")
        split = run.split_for(resplit)
        data = prepare_data(data_cfg, split)
        indices, source = (
            data.test_indices,
            f"test split of {data_cfg.path}" + (" (split anew: --resplit)" if resplit else ""),
        )
        if indices.size == 0:
            raise _no_data_error(run, "its test split is empty")
    else:
        data = prepare_data(
            data_cfg.model_copy(update={"path": Path(parity_data), "test_path": None}),
            None,
            class_names=config.class_names,
            whole_folder=True,
        )
        indices, source = data.all_indices, f"images of {parity_data}"
    rows = spread_rows(indices, n_images)
    loader = BatchLoader(
        data.images,
        data.labels,
        rows,
        batch_size=rows.size,
        shuffle=False,
        augment=False,
        mean=config.mean,
        std=config.std,
    )
    images, _ = next(iter(loader))
    return images, source


def _detection_parity_images(
    run: RunDir, config: RunConfig, n_images: int, parity_data: Path | None
) -> tuple[torch.Tensor, str]:
    """``parity_images`` of a detector: from its test split, or from every image of another
    detection folder, letterboxed and normalised as it was trained."""
    from rscompress.data.detection_loader import DetectionBatches
    from rscompress.data.detection_prepare import prepare_detection, split_from_json

    root = Path(parity_data) if parity_data is not None else Path(config.data["path"])
    if not root.is_dir():
        raise _no_data_error(run, f"its data folder {root} is not there")
    data = prepare_detection(root, config.img_size)
    if parity_data is None:
        data = split_from_json(data, run.split_path)
        indices, source = data.split["test"], f"test split of {root}"
    else:
        indices, source = np.concatenate(list(data.split.values())), f"images of {root}"
    if indices.size == 0:
        raise _no_data_error(run, "its test split is empty")
    rows = spread_rows(np.sort(indices), n_images)
    images, _ = next(iter(DetectionBatches(data, rows, batch_size=rows.size, mean=config.mean, std=config.std)))
    return images, source


def run_metadata(config: RunConfig) -> dict[str, str]:
    """What a consumer of the ONNX file needs to feed it and read its output."""
    return {
        "producer": f"rscompress {__version__}",
        "model": config.model,
        "img_size": str(config.img_size),
        "input": "images: float32 N×3×H×W RGB, (pixel / 255 - mean) / std per channel",
        "mean": json.dumps(config.mean),
        "std": json.dumps(config.std),
        "class_names": json.dumps(config.class_names),
        **(
            {"output": "logits: N×(L·(C+5)) raw FCOS head outputs per FPN location (models/detection.RawPredictions)"}
            if model_task(config.model) == "detection"
            else {}
        ),
    }


def check_destination(run: RunDir, dest: Path, overwrite: bool) -> None:
    """Refuse an export of ``run`` to ``dest`` that could destroy something: a name not ending
    in .onnx, a folder, a path inside another run dir (its files are that run's results), and
    an existing file unless ``overwrite``.

    The default path (``RUN/model.onnx``) follows the same rule as any other: the file already
    there may be the one that was deployed, benchmarked or reported on, and an export made later
    (other parity images, another version) replacing it unasked would change what those numbers
    describe. A first export needs no flag; a second one says so, and --overwrite replaces it.
    """
    if dest.suffix != ".onnx":
        raise UserError(f"--out {dest}: an ONNX file's name must end in .onnx")
    if dest.is_dir():
        raise UserError(f"--out {dest} is a folder; give a file name ending in .onnx")
    if (other := _other_run_around(dest, run)) is not None:
        raise UserError(
            f"--out {dest} is inside {other}, another run dir whose files are that run's results; "
            f"export into {run.path} or outside any run dir"
        )
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise UserError(f"{dest} exists; pass --overwrite to replace it")


def _other_run_around(dest: Path, run: RunDir) -> Path | None:
    """The nearest run dir holding ``dest`` other than ``run``; None when ``run`` is nearer or there is none."""
    own = run.path.resolve()
    folder = dest.parent.resolve()
    for candidate in (folder, *folder.parents):
        if candidate == own:
            return None
        if RunDir(candidate).is_run_dir():
            return candidate
    return None


def holding_if_inside(run: RunDir, dest: Path) -> AbstractContextManager[object]:
    """``run`` held (RunDir.owned) while an export writes ``dest`` into it; nothing to hold
    for a file written elsewhere, so a read-only run can still be exported out of it."""
    own = run.path.resolve()
    inside = own in (dest.parent.resolve(), *dest.parent.resolve().parents)
    return run.owned() if inside else nullcontext()


def export_run(
    run_dir: Path | str | RunDir,
    out: Path | str | None = None,
    n_images: int = 64,
    parity_data: Path | str | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    *,
    overwrite: bool = False,
    resplit: bool = False,
) -> ExportReport:
    """Export a finished run to ``RUN/model.onnx`` (or ``out``), parity-checked on real images.

    ``out`` and ``overwrite``: as ``check_destination`` says; ``resplit``: as ``parity_images``.
    The file is written to a temp dir beside its destination and moved there only after parity
    passed, so a file at the destination has always passed its check.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    trained, config = run.require().load_model()
    model = deployable(trained)
    dest = Path(out) if out is not None else run.path / ONNX_FILE
    with holding_if_inside(run, dest):
        check_destination(run, dest, overwrite)
        parity_folder = Path(parity_data) if parity_data is not None else None
        images, source = parity_images(run, config, n_images, parity_folder, resplit=resplit)
        with staging_dir(dest, ONNX_STAGING) as staging:
            staged = export_onnx(model, config.img_size, staging / dest.name, opset, run_metadata(config))
            parity = check_parity(model, staged, images, atol)
            # A detector's raw outputs agreeing is necessary; its boxes agreeing is what is used.
            boxes = check_box_parity(trained, staged, images) if model is not trained else None
            os.replace(staged, dest)
            fsync_dir(dest.parent)
    return ExportReport(
        path=dest, size_bytes=dest.stat().st_size, opset=opset, parity=parity, parity_images=source, box_parity=boxes
    )
