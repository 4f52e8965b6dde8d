"""What ``--cache-teacher-logits`` saves in distillation (issue: distillation).

    python -m benchmarks.teacher_cache TEACHER_RUN [--student g_ghost_regnetx_004] [--epochs 30]

Two figures, both measured on the teacher run's own data and train loader:

* the time of one distillation step (student forward + backward + DKD with the teacher's
  logits) with the teacher run on the batch vs read from a warm cache, timed interleaved
  (A, B, A, B, …) so machine noise hits both alike: the saving of a hit;
* the share of hits per epoch over ``--epochs`` epochs with and without the dihedral
  augmentation, from the real loader's views (the teacher here is a stand-in that returns
  zeros: hits depend on the inputs only).

Writes benchmarks/results/teacher_cache.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.records import DEVICE, git_commit
from rscompress.api import train_loader
from rscompress.artifacts import RunDir
from rscompress.config import DataConfig, FitConfig, KDSettings
from rscompress.data.prepare import prepare_data
from rscompress.distillation.objective import freeze, teacher_loss_fn
from rscompress.distillation.teacher_cache import CachedTeacher
from rscompress.io_utils import write_json_atomic
from rscompress.models import count_macs_params, create_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "teacher_cache.json"


class _Zeros(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.num_classes)


def hit_shares(data, data_cfg: DataConfig, fit: FitConfig, num_classes: int, epochs: int) -> list[float]:
    """Share of cache hits in each epoch of the real train loader."""
    loader = train_loader(data, data_cfg, fit)
    cached = CachedTeacher(_Zeros(num_classes))
    shares = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        before = dict(cached.counts)
        for x, _ in loader:
            cached(x)
        hits, misses = (cached.counts[k] - before[k] for k in ("hits", "misses"))
        shares.append(round(hits / (hits + misses), 4))
    return shares


def step_times(teacher: nn.Module, student: nn.Module, batches: list, repeats: int) -> tuple[list[float], list[float]]:
    """Milliseconds of a DKD step with the teacher run vs with its logits from a warm cache."""
    kd = KDSettings(kd_warmup_epochs=0)
    plain = teacher_loss_fn(freeze(teacher, kd), "dkd", kd, 0.0)
    cached_teacher = freeze(teacher, kd.model_copy(update={"cache_teacher_logits": True}))
    cached = teacher_loss_fn(cached_teacher, "dkd", kd, 0.0)
    for x, _ in batches:
        cached_teacher(x)  # warm: every later call is a hit
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)  # lr 0: every step sees the same student

    def step(loss_fn, x, y) -> float:
        start = time.perf_counter()
        loss, _ = loss_fn(student, x, y, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return (time.perf_counter() - start) * 1e3

    student.train()
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats + 1):
        for x, y in batches:
            a, b = step(plain, x, y), step(cached, x, y)
            if r > 0:  # the first round is warm-up
                times[0].append(a)
                times[1].append(b)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("teacher", type=Path, help="finished teacher run dir")
    parser.add_argument("--student", default="g_ghost_regnetx_004")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    run = RunDir(args.teacher).require()
    teacher, config = run.load_model()
    data_cfg = DataConfig.model_validate(config.data)
    data = prepare_data(data_cfg, run.split_path)
    fit = FitConfig(batch_size=64)
    torch.manual_seed(0)
    student = create_model(args.student, config.num_classes, small_input=True)

    loader = train_loader(data, data_cfg, fit)
    batches = [b for _, b in zip(range(args.batches), loader, strict=False)]
    plain_ms, cached_ms = step_times(teacher, student, batches, args.repeats)
    plain, cached = statistics.median(plain_ms), statistics.median(cached_ms)
    shares = {
        "augment": hit_shares(data, data_cfg, fit, config.num_classes, args.epochs),
        "no_augment": hit_shares(
            data, data_cfg.model_copy(update={"augment": False}), fit, config.num_classes, args.epochs
        ),
    }
    out = {
        "teacher": f"{config.model} ({count_macs_params(teacher, config.img_size)[0] / 1e6:.1f} MMACs)",
        "student": f"{args.student} ({count_macs_params(student, config.img_size)[0] / 1e6:.1f} MMACs)",
        "img_size": config.img_size,
        "batch_size": fit.batch_size,
        "threads": torch.get_num_threads(),
        "step_ms_teacher_run": round(plain, 2),
        "step_ms_cache_hit": round(cached, 2),
        "saving_per_hit_step": round(1 - cached / plain, 3),
        "hit_share_per_epoch": shares,
        "device": DEVICE,
        "commit": git_commit(),
        "command": f"python -m benchmarks.teacher_cache {args.teacher} --student {args.student} --epochs {args.epochs}",
    }
    write_json_atomic(RESULTS, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
