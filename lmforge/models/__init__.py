"""Load models and tokenizers; pick device and dtype."""
from lmforge.models.loader import (ModelBundle, load_model, load_tokenizer, pick_device, pick_dtype,
                                   resolve_checkpoint)

__all__ = ['ModelBundle', 'load_model', 'load_tokenizer', 'pick_device', 'pick_dtype', 'resolve_checkpoint']
