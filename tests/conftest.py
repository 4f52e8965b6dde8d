"""Suite-wide settings: one torch thread (steadier timings on the shared 2-core machines) and a
private decoded-image cache so tests never touch the user's ~/.cache."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RSCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "rscompress-cache"))


class Killed(Exception):
    """Stands for a kill (``kill -9``) of a step."""


@pytest.fixture
def kill_at_the_end(monkeypatch):
    """``kill_at_the_end(api.train, ...)`` runs a step and stops it where a kill after its last
    epoch's checkpoint would: the final weights and metrics not yet written."""
    from rscompress.artifacts import RunDir

    def run(step, *args, **kwargs) -> None:
        def kill(*_args, **_kwargs):
            raise Killed

        with monkeypatch.context() as patch:
            patch.setattr(RunDir, "save_weights", kill)
            with pytest.raises(Killed):
                step(*args, **kwargs)

    return run
