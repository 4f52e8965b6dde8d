"""The trained run dir shared by the deploy tests (trained once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rscompress import api
from rscompress.config import DataConfig, TrainConfig
from tests.fakes import make_fake_dataset


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run dir, data folder) of a one-epoch resnet18 on a fake RSSCN7 at 16 px."""
    root = tmp_path_factory.mktemp("trained")
    data = make_fake_dataset(root, name="rsscn7", per_class=6, size=20)
    run = root / "run"
    # The cache dir is explicit: a session fixture runs before the per-test cache env is set.
    api.train(
        DataConfig(path=data, img_size=16, cache_dir=root / "cache"),
        TrainConfig(model="resnet18", epochs=1, batch_size=8),
        run,
        quiet=True,
    )
    return run, data
