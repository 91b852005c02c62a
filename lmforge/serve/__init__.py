"""The OpenAI-compatible server: `create_app(engine, ...)` builds the FastAPI app, `start_server(app)` runs it in a
background thread (``handle.url`` is the client's base URL, ``handle.stop()`` ends it).

``lmforge.serve(model=..., port=8000)`` is the Python SDK of `lmforge serve` (this package is callable, like
`lmforge.export`): it loads the model and serves it in the foreground.
"""
import sys
import types

from lmforge.serve.app import create_app
from lmforge.serve.server import ServerHandle, start_server


def serve(config=None, **kwargs) -> None:
    """Python SDK: ``serve(model='out/checkpoint-100', port=8000)``; the names of `lmforge serve --help`."""
    from lmforge.workflows.serve import serve as run
    run(config, **kwargs)


class _CallableModule(types.ModuleType):
    def __call__(self, config=None, **kwargs) -> None:
        serve(config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ['create_app', 'start_server', 'ServerHandle', 'serve']
