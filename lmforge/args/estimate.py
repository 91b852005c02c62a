"""Arguments of `lmforge estimate`: the flags of `lmforge sft` that decide training memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmforge.args.common import ModelArgs
from lmforge.args.distributed import DEEPSPEED_PRESETS
from lmforge.args.parse import arg
from lmforge.args.train import TunerArgs
from lmforge.errors import ArgumentError


@dataclass
class EstimateArgs(TunerArgs, ModelArgs):
    """Predict the peak GPU memory of a training run from the model's config alone (no weights are downloaded):
    weights, gradients, optimizer states and activations, and which common GPUs it fits.

    Example: lmforge estimate --model Qwen/Qwen2.5-7B-Instruct --tuner_type lora --max_length 4096
             --per_device_train_batch_size 4 [--quant_bits 4] [--deepspeed zero3 --nproc_per_node 8]
    """
    command = 'estimate'
    max_length: int = arg(2048, 'tokens per row (padding-free/packed rows: the tokens of one batch row)')
    per_device_train_batch_size: int = arg(1, 'rows per device per forward pass')
    gradient_checkpointing: bool = arg(True, 'recompute activations in backward (as `lmforge sft`, default on)')
    optim: str = arg('adamw_torch', 'optimizer as transformers names it (adamw_*, adamw_8bit, adafactor, sgd, lion)')
    deepspeed: Optional[str] = arg(None, 'DeepSpeed ZeRO preset', choices=DEEPSPEED_PRESETS)
    nproc_per_node: int = arg(1, 'GPUs per node (ZeRO shards over all of them)')
    nnodes: int = arg(1, 'nodes')
    trained_token_ratio: float = arg(1.0, 'fraction of the tokens the loss is taken on: lmforge computes the LM head '
                                          'only there (e.g. 0.3 for SFT with long prompts; 1 for pre-training)')
    padding_free: bool = arg(True, 'padding-free batching (as `lmforge sft` where the model supports it): with sdpa '
                                   'the packed rows need a mask, so GQA keys/values are expanded to all heads')
    gpu_memory: list[float] = arg(help='GPU sizes (GB) to check the fit against',
                                  factory=lambda: [24.0, 40.0, 48.0, 80.0, 141.0])

    def validate(self):
        self.validate_model()
        if self.quant_bits and not self.quant_method:
            self.quant_method = 'bnb'
        if self.tuner_type == 'reft':
            raise ArgumentError('tuner_type', 'reft is not available in lmforge, so it has no estimate')
        self.validate_tuner()
        for name in ('max_length', 'per_device_train_batch_size', 'nproc_per_node', 'nnodes', 'lora_rank'):
            if getattr(self, name) <= 0:
                raise ArgumentError(name, f'must be positive, got {getattr(self, name)}')
        if not 0 < self.trained_token_ratio <= 1:
            raise ArgumentError('trained_token_ratio', f'must be in (0, 1], got {self.trained_token_ratio}')
        bad = [g for g in self.gpu_memory if g <= 0]
        if bad:
            raise ArgumentError('gpu_memory', f'GPU sizes must be positive (GB), got {bad[0]}')
