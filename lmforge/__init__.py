"""lmforge: from a model and a dataset to a fine-tuned model answering through an OpenAI-compatible server.

The SDK mirrors the CLI: ``from lmforge import sft; sft(model=..., dataset=[...], lora_rank=16)`` takes the same
names as ``lmforge sft --lora_rank 16`` and the keys of ``lmforge sft --config run.yaml``.
Heavy libraries (torch, transformers) load on first use, not on import.
"""
__version__ = '0.1.0'

# SDK function -> its workflow module. infer, serve, rlhf, export, eval and demo are also packages, made callable
# (lmforge/sdk.py), so the name runs the workflow whether or not the package was imported first.
_LAZY = {name: f'lmforge.workflows.{module}' for name, module in (
    ('sft', 'sft'), ('pt', 'sft'), ('rlhf', 'rlhf'), ('infer', 'infer'), ('serve', 'serve'), ('download', 'download'),
    ('demo', 'demo'), ('export', 'export'), ('eval', 'eval'))}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module lmforge has no attribute {name!r}')


__all__ = ['sft', 'pt', 'rlhf', 'infer', 'serve', 'download', 'demo', 'export', 'eval', '__version__']
