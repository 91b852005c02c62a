"""Distributed-training arguments, shared by sft, pt and rlhf (ms-swift's names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmforge.args.parse import arg
from lmforge.errors import ArgumentError

DEEPSPEED_PRESETS = ('zero0', 'zero1', 'zero2', 'zero2_offload', 'zero3', 'zero3_offload')
FSDP_PRESETS = ('full_shard', 'full_shard_offload')


@dataclass
class DistributedArgs:
    deepspeed: Optional[str] = arg(None, f'DeepSpeed: {"|".join(DEEPSPEED_PRESETS)} (bundled configs, "auto" values '
                                         'filled from these arguments) or a JSON file taken as is')
    fsdp: Optional[str] = arg(None, f'FSDP2 through accelerate: {"|".join(FSDP_PRESETS)} (wraps each decoder layer) '
                                    'or a JSON fsdp_config file')
    ddp_backend: Optional[str] = arg(None, 'torch.distributed backend; default nccl on CUDA, gloo on CPU',
                                     choices=('nccl', 'gloo', 'hccl', 'mpi', 'ccl', 'xccl'))
    ddp_timeout: int = arg(18000, 'seconds a process waits for the others (collectives, dataset preprocessing)')
    ddp_find_unused_parameters: Optional[bool] = arg(None, 'DDP: look for parameters without gradients each step '
                                                           '(unset: only for MoE models and LISA)')

    def validate_distributed(self):
        import os

        if self.deepspeed and self.fsdp:
            raise ArgumentError('fsdp', 'and --deepspeed both shard the model: choose one of them')
        if self.deepspeed and self.deepspeed not in DEEPSPEED_PRESETS and not os.path.isfile(self.deepspeed):
            raise ArgumentError('deepspeed', f'{self.deepspeed!r} is neither a preset '
                                             f'({", ".join(DEEPSPEED_PRESETS)}) nor a JSON file')
        if self.fsdp and self.fsdp not in FSDP_PRESETS and not os.path.isfile(self.fsdp):
            raise ArgumentError('fsdp', f'{self.fsdp!r} is neither a preset ({", ".join(FSDP_PRESETS)}) nor a JSON file')
        if self.ddp_timeout <= 0:
            raise ArgumentError('ddp_timeout', f'must be positive, got {self.ddp_timeout}')
