"""Arguments of `lmforge infer`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmforge.args.common import GenerationArgs, ModelArgs, TemplateArgs
from lmforge.args.parse import arg
from lmforge.errors import ArgumentError


@dataclass
class InferArgs(GenerationArgs, TemplateArgs, ModelArgs):
    """Chat with a model in the terminal, or answer every row of a dataset (batch mode).

    Examples: lmforge infer --model output/checkpoint-100      (a full or LoRA checkpoint: its base is found)
              lmforge infer --model Qwen/Qwen2.5-0.5B-Instruct --val_dataset test.jsonl --result_path out.jsonl
    """
    command = 'infer'
    adapters: list[str] = arg(help='LoRA checkpoint(s) to apply to --model', factory=list)
    infer_backend: str = arg('pt', 'inference engine', choices=('pt',))
    val_dataset: list[str] = arg(help='batch mode: answer the last user turn of every row of these files',
                                 factory=list)
    result_path: Optional[str] = arg(None, 'batch mode: write one JSON line per row here')
    max_batch_size: int = arg(16, 'rows generated together in batch mode')
    stream: bool = arg(True, 'interactive mode: print tokens as they are generated')
    seed: int = arg(42, 'random seed for sampling')

    def validate(self):
        if not self.model and not self.adapters:
            raise ArgumentError('model', 'is required: a model directory, hub id, or a checkpoint')
        if self.result_path and not self.val_dataset:
            raise ArgumentError('result_path', 'needs --val_dataset: the rows to answer')
        if self.max_batch_size <= 0:
            raise ArgumentError('max_batch_size', f'must be positive, got {self.max_batch_size}')
        self.validate_generation()
