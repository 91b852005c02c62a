"""Arguments of the small workflows: `lmforge download` and `lmforge demo`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmforge.args.common import check_output_path
from lmforge.args.parse import arg
from lmforge.errors import ArgumentError


@dataclass
class DownloadArgs:
    """Download a model into the local hub cache (ModelScope, or Hugging Face with --use_hf).

    Example: lmforge download --model Qwen/Qwen2.5-0.5B-Instruct --use_hf
    """
    command = 'download'
    model: Optional[str] = arg(None, 'hub id of the model')
    use_hf: bool = arg(False, 'download from the Hugging Face Hub instead of ModelScope')
    model_revision: Optional[str] = arg(None, 'branch, tag or commit')
    hub_token: Optional[str] = arg(None, 'token for private models')
    local_dir: Optional[str] = arg(None, 'also place the files in this directory')

    def validate(self):
        if not self.model:
            raise ArgumentError('model', 'is required: the hub id to download')
        check_output_path(self.local_dir, 'local_dir')


@dataclass
class DemoArgs:
    """Build a small Qwen2-architecture model locally, fine-tune it on bundled data, and show that it learned.

    Example: lmforge demo --output_dir demo_output
    """
    command = 'demo'
    output_dir: str = arg('demo_output', 'where the base model, checkpoints and results go')
    max_steps: int = arg(800, 'training steps (fewer for a quicker, weaker demo)')
    num_eval: int = arg(40, 'held-out questions asked before and after training')
    serve: bool = arg(True, 'after training, answer a question through the OpenAI-compatible server')
    overwrite_output_dir: bool = arg(True, 'replace an earlier demo in --output_dir')

    def validate(self):
        if self.max_steps <= 0:
            raise ArgumentError('max_steps', f'must be positive, got {self.max_steps}')
        if self.num_eval <= 0:
            raise ArgumentError('num_eval', f'must be positive, got {self.num_eval}')
        check_output_path(self.output_dir, 'output_dir')
