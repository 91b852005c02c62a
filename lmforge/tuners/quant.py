"""Quantized base models for QLoRA-style training (--quant_method bnb|hqq|eetq --quant_bits 4|8). CUDA only.

bnb 4-bit: NF4 (or FP4) with double quantization and compute in the training dtype (bf16 on GPUs that have it);
bnb 8-bit: LLM.int8(). hqq: half-quadratic quantization (group size 64). eetq: int8 weight-only. After loading,
peft's prepare_model_for_kbit_training casts norms to fp32, enables input gradients for gradient checkpointing and
freezes the base; the adapters then train on top.
"""
from __future__ import annotations

import importlib.util

from lmforge.errors import ArgumentError

PACKAGES = {'bnb': ('bitsandbytes', 'bitsandbytes'), 'hqq': ('hqq', 'hqq'), 'eetq': ('eetq', 'eetq')}


def check_quantization(args, device: str) -> None:
    """The clear error for a quantized base on a machine that cannot run it (before anything loads)."""
    method = getattr(args, 'quant_method', None)
    if not method:
        return
    module, package = PACKAGES[method]
    if device != 'cuda':
        raise ArgumentError('quant_method', f'{method} {args.quant_bits}-bit training needs a CUDA GPU; this machine '
                                            f'has {device}. Train without --quant_method (LoRA on the unquantized '
                                            'model), or on a GPU machine.')
    if importlib.util.find_spec(module) is None:
        raise ArgumentError('quant_method', f'{method} needs the {package} package: pip install {package}')


def quantization_config(args, dtype):
    """The transformers quantization config for --quant_method/--quant_bits (None when not quantizing)."""
    method = getattr(args, 'quant_method', None)
    if not method:
        return None
    if method == 'bnb':
        from transformers import BitsAndBytesConfig
        if args.quant_bits == 4:
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=args.bnb_4bit_quant_type,
                                      bnb_4bit_use_double_quant=args.bnb_4bit_use_double_quant,
                                      bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
        return BitsAndBytesConfig(load_in_8bit=True)
    if method == 'hqq':
        from transformers import HqqConfig
        return HqqConfig(nbits=args.quant_bits, group_size=64)
    from transformers import EetqConfig
    return EetqConfig('int8')


def prepare_quantized(model, args):
    """peft's preparation of a k-bit model for training (a no-op for unquantized models)."""
    if not getattr(args, 'quant_method', None):
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=getattr(args, 'gradient_checkpointing', True),
        gradient_checkpointing_kwargs={'use_reentrant': False})
