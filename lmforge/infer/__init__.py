"""Inference engines: the interface and the transformers ("pt") engine (`engine`); the optional vLLM / SGLang /
LMDeploy engines and `make_engine(backend, ...)`, what --infer_backend builds (`backends`).

``lmforge.infer(...)`` is the Python SDK of `lmforge infer` (this package is callable: see lmforge/sdk.py).
"""
from lmforge.sdk import callable_package

callable_package(__name__, 'lmforge.workflows.infer:infer')
