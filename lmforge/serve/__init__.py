"""The OpenAI-compatible server: `create_app(engine, ...)` builds the FastAPI app, `start_server(app)` runs it in a
background thread (``handle.url`` is the client's base URL, ``handle.stop()`` ends it).

``lmforge.serve(model=..., port=8000)`` is the Python SDK of `lmforge serve` (this package is callable, like
`lmforge.export`): it loads the model and serves it in the foreground.
"""
from lmforge.sdk import callable_package

from lmforge.serve.app import create_app
from lmforge.serve.server import ServerHandle, start_server





__all__ = ['create_app', 'start_server', 'ServerHandle']

callable_package(__name__, 'lmforge.workflows.serve:serve')
