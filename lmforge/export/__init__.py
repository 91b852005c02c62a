"""Export: merge LoRA adapters (with a parity check), quantize (awq/gptq/bnb/fp8), GGUF + Ollama Modelfile, push.

``lmforge.export(...)`` is the Python SDK of `lmforge export` (this package is callable, so that the name means the
same whether or not a submodule was imported first); the steps live in the submodules: `merge`, `quantize`,
`to_gguf` (+ `gguf_quants`), `ollama`, `hub`.
"""
from lmforge.sdk import callable_package


callable_package(__name__, 'lmforge.workflows.export:export')
