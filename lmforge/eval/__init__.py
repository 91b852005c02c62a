"""Evaluation: benchmarks through lm-evaluation-harness (`harness`), custom multiple-choice / open-QA .jsonl sets
(`custom`, `metrics`), against a loaded model or a running OpenAI-compatible server (`client`).

``lmforge.eval(...)`` is the Python SDK of `lmforge eval` (this package is callable, so that the name means the same
whether or not a submodule was imported first).
"""
import sys
import types


def eval(config=None, **kwargs) -> dict:  # noqa: A001 - the command's name
    """Python SDK: ``eval(model=..., eval_dataset=['arc', 'my.jsonl'])``; the names of `lmforge eval --help`."""
    from lmforge.workflows.eval import eval as run
    return run(config, **kwargs)


class _CallableModule(types.ModuleType):
    def __call__(self, config=None, **kwargs) -> dict:
        return eval(config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
