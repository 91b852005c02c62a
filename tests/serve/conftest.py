"""Servers for the serve tests: the real app on 127.0.0.1 over a tiny random Qwen2 (tests/conftest.py's qwen2_dir),
driven by the official openai SDK (max_retries=0: a 429 or 5xx must surface, not be retried)."""
from __future__ import annotations

import pytest

from .helpers import MODEL, client_for


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
