"""Export: merge LoRA adapters (with a parity check), quantize (awq/gptq/bnb/fp8), GGUF + Ollama Modelfile, push.

``lmforge.export(...)`` is the Python SDK of `lmforge export` (this package is callable, so that the name means the
same whether or not a submodule was imported first); the steps live in the submodules: `merge`, `quantize`,
`to_gguf` (+ `gguf_quants`), `ollama`, `hub`.
"""
import sys
import types


def export(config=None, **kwargs) -> dict:
    """Python SDK: ``export(adapters=['out/checkpoint-100'], merge_lora=True)``; names of `lmforge export --help`."""
    from lmforge.workflows.export import export as run
    return run(config, **kwargs)


class _CallableModule(types.ModuleType):
    def __call__(self, config=None, **kwargs) -> dict:
        return export(config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
