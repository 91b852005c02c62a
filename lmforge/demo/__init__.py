"""The embedded default: a small model built locally (`build`) and bundled demo data (`tasks`, *.jsonl).

``lmforge.demo(...)`` is the Python SDK of `lmforge demo` (this package is callable: see lmforge/sdk.py).
"""
from lmforge.sdk import callable_package

callable_package(__name__, 'lmforge.workflows.demo:demo')
