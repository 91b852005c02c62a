"""Servers for the serve tests: the real app on 127.0.0.1 over a tiny random Qwen2 (tests/conftest.py's qwen2_dir),
driven by the official openai SDK (max_retries=0: a 429 or 5xx must surface, not be retried)."""
from __future__ import annotations

import pytest

from .helpers import MODEL, client_for


@pytest.fixture(scope='package', autouse=True)
def one_torch_thread():
    """The tiny model's ops are too small to share among threads: on a busy machine, intra-op threads only wait
    for each other (10x slower here). Restored afterwards for the other test packages."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='session')
def engine(qwen2_dir):
    from lmforge.infer.engine import PtEngine

    return PtEngine(qwen2_dir)


@pytest.fixture(scope='session')
def server(engine):
    from lmforge.serve import create_app, start_server

    handle = start_server(create_app(engine, served_model_name=MODEL))
    yield handle
    handle.stop()


@pytest.fixture
def client(server):
    c = client_for(server)
    yield c
    c.close()
