"""Model and tokenizer loading: local dirs, hub ids and lmforge checkpoints (full or LoRA) alike."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

from lmforge.errors import ModelError
from lmforge.hub import resolve_model

# peft 0.21 and trl 1.16 call transformers 5.23's deprecated `is_gradient_checkpointing` /
# `gradient_checkpointing_enable|disable`, a warning per process and call: not the user's doing, nothing they can change
warnings.filterwarnings('ignore', message=r'`(is_)?gradient_checkpointing\w*` is deprecated', category=FutureWarning)


def pick_device() -> str:
    """cuda > npu > mps > cpu."""
    import torch

    if torch.cuda.is_available():
        return 'cuda'
    if hasattr(torch, 'npu') and torch.npu.is_available():
        return 'npu'
    if torch.backends.mps.is_available():
        return 'mps'
    return 'cpu'


def pick_dtype(torch_dtype: str, device: str):
    """`auto`: bf16 where the device computes in it natively (CUDA with bf16 support, NPU), else fp32."""
    import torch

    if torch_dtype != 'auto':
        return getattr(torch, torch_dtype)
    if device == 'cuda' and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == 'npu':
        return torch.bfloat16
    return torch.float32


@dataclass
class ModelBundle:
    """Where a model comes from: the base directory and the LoRA adapters to apply on it (maybe none)."""
    base_dir: str
    adapters: list = field(default_factory=list)
    # The directory whose tokenizer/template/generation config win: the newest checkpoint given, else the base.
    tokenizer_dir: str = ''


def _adapter_base(adapter_dir: str) -> str:
    """The base model an adapter checkpoint was trained on: lmforge's args.json first, then PEFT's own record."""
    args_path = os.path.join(adapter_dir, 'args.json')
    if os.path.isfile(args_path):
        with open(args_path, encoding='utf-8') as f:
            saved = json.load(f)
        if saved.get('base_model_dir') and os.path.isdir(saved['base_model_dir']):
            return saved['base_model_dir']
        if saved.get('model'):
            return resolve_model(saved['model'], use_hf=saved.get('use_hf'), revision=saved.get('model_revision'))
    with open(os.path.join(adapter_dir, 'adapter_config.json'), encoding='utf-8') as f:
        base = json.load(f).get('base_model_name_or_path')
    if not base:
        raise ModelError(f'{adapter_dir}: adapter_config.json does not name its base model; pass --model BASE')
    return resolve_model(base)


def resolve_checkpoint(model: str | None, adapters: list | None = None, use_hf: bool = False,
                       revision: str | None = None, token: str | None = None) -> ModelBundle:
    """Turn --model/--adapters into a base dir + adapter dirs. ``--model`` may itself be a LoRA checkpoint."""
    adapters = [os.path.abspath(a) for a in (adapters or [])]
    for a in adapters:
        if not os.path.isfile(os.path.join(a, 'adapter_config.json')):
            raise ModelError(f'--adapters: {a} holds no adapter_config.json: not a LoRA checkpoint')
    if model:
        path = resolve_model(model, use_hf=use_hf, revision=revision, token=token)
        if os.path.isfile(os.path.join(path, 'adapter_config.json')) and \
                not os.path.isfile(os.path.join(path, 'config.json')):
            adapters.insert(0, path)
            path = _adapter_base(path)
    elif adapters:
        path = _adapter_base(adapters[0])
    else:
        raise ModelError('--model is required')
    tokenizer_dir = next((a for a in reversed(adapters) if _has_tokenizer(a)), path)
    return ModelBundle(base_dir=path, adapters=adapters, tokenizer_dir=tokenizer_dir)


def _has_tokenizer(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ('tokenizer.json', 'tokenizer_config.json'))


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The model's own tokenizer, with a pad token (eos when the model defines none)."""
    from transformers import AutoTokenizer

    if not _has_tokenizer(path):
        raise ModelError(f'{path} has no tokenizer files (tokenizer.json / tokenizer_config.json)')
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f'could not load the tokenizer of {path}: {e}') from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def load_model(path: str, torch_dtype: str = 'auto', attn_impl: str | None = None, device: str | None = None,
               trust_remote_code: bool = False, adapters: list | None = None, trainable_adapters: bool = False,
               quantization_config=None):
    """A causal LM from ``path`` on ``device`` (auto), with ``adapters`` applied (frozen unless trainable).
    ``quantization_config`` (lmforge.tuners.quant) loads the weights quantized, straight onto the current GPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    device = device or pick_device()
    dtype = pick_dtype(torch_dtype, device)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f'could not read the model config of {path}: {e}') from None
    quant = _quantized_load_kwargs(quantization_config)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype,
                                                     attn_implementation=attn_impl or 'sdpa',
                                                     trust_remote_code=trust_remote_code, **quant)
    except (OSError, ValueError) as e:
        raise ModelError(f'could not load the model weights of {path}: {e}') from None
    _load_custom_tuner_weights(model, path)
    if device != 'cpu' and not quant:
        model.to(device)
    for i, adapter in enumerate(adapters or []):
        from peft import PeftModel
        if i == 0:
            model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable_adapters,
                                              adapter_name='default')
        else:  # stack further adapters by merging the previous ones in
            model = model.merge_and_unload()
            model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable_adapters)
    return model


def _quantized_load_kwargs(quantization_config) -> dict:
    """from_pretrained arguments for a quantized load: the config, and the weights placed on this process's GPU
    (quantized weights cannot be moved afterwards)."""
    if quantization_config is None:
        return {}
    import torch

    return {'quantization_config': quantization_config, 'device_map': {'': torch.cuda.current_device()}}


def _load_custom_tuner_weights(model, path: str) -> None:
    """Checkpoints of lmforge's own tuners that transformers cannot rebuild alone (bottleneck adapters)."""
    if getattr(model.config, 'lmforge_bottleneck_adapter', None):
        from lmforge.tuners.adapter import load_bottleneck_adapters
        load_bottleneck_adapters(model, path)
