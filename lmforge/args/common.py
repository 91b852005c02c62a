"""Argument groups shared by several workflows (model, template, generation)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from lmforge.args.parse import arg
from lmforge.errors import ArgumentError

DTYPES = ('auto', 'bfloat16', 'float16', 'float32')
ATTN_IMPLS = ('sdpa', 'eager', 'flash_attention_2', 'flash_attention_3', 'flex_attention')


@dataclass
class ModelArgs:
    model: Optional[str] = arg(None, 'model: a local directory, a ModelScope id, or a Hugging Face id with --use_hf')
    model_type: Optional[str] = arg(None, 'architecture name (e.g. qwen2); read from config.json when omitted')
    use_hf: bool = arg(False, 'resolve --model/--dataset ids on the Hugging Face Hub instead of ModelScope')
    model_revision: Optional[str] = arg(None, 'hub revision (branch, tag or commit) of --model')
    hub_token: Optional[str] = arg(None, 'token for private hub models (else the hub library\'s own login)')
    torch_dtype: str = arg('auto', 'weights and compute dtype; auto = bf16 where the device supports it, else fp32',
                           choices=DTYPES)
    attn_impl: Optional[str] = arg(None, 'attention implementation; default sdpa', choices=ATTN_IMPLS)
    trust_remote_code: bool = arg(False, 'allow code from the model repository to run')

    def validate_model(self):
        if not self.model:
            raise ArgumentError('model', 'is required: a local model directory or a hub id')


@dataclass
class TemplateArgs:
    template: Optional[str] = arg(None, "chat template override: a registry name (e.g. chatml) or a .jinja file; "
                                        "default: the model's own template")
    system: Optional[str] = arg(None, "default system prompt for conversations without one (else the template's own)")


@dataclass
class GenerationArgs:
    max_new_tokens: int = arg(512, 'most tokens to generate per answer')
    temperature: float = arg(0.0, 'sampling temperature; 0 = greedy')
    top_p: float = arg(1.0, 'nucleus sampling probability mass')
    top_k: int = arg(50, 'sample among the k most likely tokens')
    repetition_penalty: float = arg(1.0, 'penalty for repeated tokens (1 = none)')
    stop_words: list[str] = arg(help='extra strings that end generation', factory=list)

    def validate_generation(self):
        if self.max_new_tokens <= 0:
            raise ArgumentError('max_new_tokens', f'must be positive, got {self.max_new_tokens}')
        if self.temperature < 0:
            raise ArgumentError('temperature', f'must be >= 0, got {self.temperature}')
        if not 0 < self.top_p <= 1:
            raise ArgumentError('top_p', f'must be in (0, 1], got {self.top_p}')
        if self.top_k < 0:
            raise ArgumentError('top_k', f'must be >= 0, got {self.top_k}')
        if self.repetition_penalty <= 0:
            raise ArgumentError('repetition_penalty', f'must be positive, got {self.repetition_penalty}')


def check_output_path(path: Optional[str], flag: str, is_dir: bool = True) -> None:
    """An output path must be creatable: said now, not after the work it would have held is done."""
    if not path:
        return
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full):
        if is_dir and not os.path.isdir(full):
            raise ArgumentError(flag, f'{path} is a file, not a directory')
        if not is_dir and os.path.isdir(full):
            raise ArgumentError(flag, f'{path} is a directory; give a file path (e.g. '
                                      f'{os.path.join(path, "result.jsonl")})')
        return
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ArgumentError(flag, f'{path} cannot be created: {parent} is a file, not a directory')
