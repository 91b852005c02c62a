"""Arguments of `lmforge infer`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmforge.args.common import GenerationArgs, ModelArgs, TemplateArgs, check_output_path
from lmforge.args.parse import arg
from lmforge.errors import ArgumentError

INFER_BACKENDS = ('pt', 'vllm', 'sglang', 'lmdeploy')
BACKEND_HELP = ('inference engine: pt (transformers), or vllm / sglang / lmdeploy (CUDA only, installed apart: '
                'pip install "lmforge[vllm]")')
ENGINE_KWARGS_HELP = ('more settings of the vllm/sglang/lmdeploy engine, JSON, e.g. '
                      '\'{"gpu_memory_utilization": 0.5}\' (vllm.LLM / sglang.Engine / lmdeploy engine config '
                      'arguments)')


def validate_backend(args) -> None:
    """--engine_kwargs only where an optional engine takes them (serve and infer share this)."""
    if args.engine_kwargs and args.infer_backend == 'pt':
        raise ArgumentError('engine_kwargs', 'are settings of the vllm/sglang/lmdeploy engines; --infer_backend is pt')


@dataclass
class InferArgs(GenerationArgs, TemplateArgs, ModelArgs):
    """Chat with a model in the terminal, or answer every row of a dataset (batch mode).

    Examples: lmforge infer --model output/checkpoint-100      (a full or LoRA checkpoint: its base is found)
              lmforge infer --model Qwen/Qwen2.5-0.5B-Instruct --val_dataset test.jsonl --result_path out.jsonl
    """
    command = 'infer'
    adapters: list[str] = arg(help='LoRA checkpoint(s) to apply to --model', factory=list)
    infer_backend: str = arg('pt', BACKEND_HELP, choices=INFER_BACKENDS)
    engine_kwargs: Optional[dict] = arg(None, ENGINE_KWARGS_HELP)
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
        check_output_path(self.result_path, 'result_path', is_dir=False)
        if self.max_batch_size <= 0:
            raise ArgumentError('max_batch_size', f'must be positive, got {self.max_batch_size}')
        validate_backend(self)
        self.validate_generation()
