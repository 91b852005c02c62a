"""Model and tokenizer loading: local dirs, hub ids and lmforge checkpoints (full or LoRA) alike."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

from lmforge.errors import ModelError
from lmforge.hub import check_adapter_dir, resolve_model

# peft 0.21 and trl 1.16 call transformers 5.23's deprecated `is_gradient_checkpointing` /
# `gradient_checkpointing_enable|disable`, a warning per process and call: not the user's doing, nothing they can change
warnings.filterwarnings('ignore', message=r'`(is_)?gradient_checkpointing\w*` is deprecated', category=FutureWarning)


# what transformers' RuntimeErrors say when a checkpoint's tensors do not fit the model its config.json builds
_LOAD_REPORT_ERRORS = ('ignore_mismatched_sizes', 'Error(s) in loading state_dict', 'conversion of the weights')


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
    saved = _read_json(args_path) if os.path.isfile(args_path) else None
    if isinstance(saved, dict):
        if saved.get('base_model_dir') and os.path.isdir(saved['base_model_dir']):
            return saved['base_model_dir']
        if saved.get('model'):
            return resolve_model(saved['model'], use_hf=saved.get('use_hf'), revision=saved.get('model_revision'))
    config = _read_json(os.path.join(adapter_dir, 'adapter_config.json'))
    base = config.get('base_model_name_or_path') if isinstance(config, dict) else None
    if not base:
        raise ModelError(f'{adapter_dir}: adapter_config.json does not name its base model; pass --model BASE')
    return resolve_model(base)


def _read_json(path: str):
    """The content of a JSON file of a checkpoint, or a ModelError naming the file."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f'{path} is not valid JSON ({e})') from None


def resolve_checkpoint(model: str | None, adapters: list | None = None, use_hf: bool = False,
                       revision: str | None = None, token: str | None = None, flag: str = 'model') -> ModelBundle:
    """Turn --model/--adapters into a base dir + adapter dirs. ``--model`` may itself be a LoRA checkpoint.
    ``flag`` names the model in errors (--ref_model, --teacher_model, --reward_model ...)."""
    adapters = [check_adapter_dir(a) for a in (adapters or [])]
    if model:
        path = resolve_model(model, use_hf=use_hf, revision=revision, token=token, flag=flag)
        if os.path.isfile(os.path.join(path, 'adapter_config.json')) and \
                not os.path.isfile(os.path.join(path, 'config.json')):
            check_adapter_dir(path, flag)
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
    from safetensors import SafetensorError
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
    except SafetensorError as e:
        raise ModelError(f'could not load the model weights of {path}: a .safetensors file there is corrupt or '
                         f'incomplete ({e})') from None
    except RuntimeError as e:  # transformers' report of weights that do not fit the config (logged above)
        if not any(m in str(e) for m in _LOAD_REPORT_ERRORS):
            raise
        raise ModelError(f'could not load the model weights of {path}: their shapes do not match its config.json '
                         '(see the load report above)') from None
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
