"""lmforge: from a model and a dataset to a fine-tuned model answering through an OpenAI-compatible server.

The SDK mirrors the CLI: ``from lmforge import sft; sft(model=..., dataset=[...], lora_rank=16)`` takes the same
names as ``lmforge sft --lora_rank 16`` and the keys of ``lmforge sft --config run.yaml``.
Heavy libraries (torch, transformers) load on first use, not on import.
"""
__version__ = '0.1.0'

_LAZY = {
    'sft': 'lmforge.workflows.sft', 'pt': 'lmforge.workflows.sft', 'infer': 'lmforge.workflows.infer',
    'download': 'lmforge.workflows.download', 'demo': 'lmforge.workflows.demo', 'rlhf': 'lmforge.workflows.rlhf',
    'export': 'lmforge.export', 'eval': 'lmforge.eval',  # callable packages: lmforge.export(...), lmforge.eval(...)
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module lmforge has no attribute {name!r}')


__all__ = ['sft', 'pt', 'rlhf', 'infer', 'download', 'demo', 'export', 'eval', '__version__']
