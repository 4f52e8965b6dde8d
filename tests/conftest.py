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
