"""Evaluation: benchmarks through lm-evaluation-harness (`harness`), custom multiple-choice / open-QA .jsonl sets
(`custom`, `metrics`), against a loaded model or a running OpenAI-compatible server (`client`).

``lmforge.eval(...)`` is the Python SDK of `lmforge eval` (this package is callable, so that the name means the same
whether or not a submodule was imported first).
"""
from lmforge.sdk import callable_package


callable_package(__name__, 'lmforge.workflows.eval:eval')
