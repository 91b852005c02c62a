"""Distributed training on the field's engines: torchrun (DDP), FSDP2 and DeepSpeed through transformers/accelerate.

`NPROC_PER_NODE=N lmforge sft ...` re-launches itself with `python -m torch.distributed.run` (torchrun), printing the
exact command so it can be reproduced under Slurm or Kubernetes; `NNODES`, `NODE_RANK`, `MASTER_ADDR`,
`MASTER_PORT` describe several machines. `torchrun -m lmforge sft ...` and `accelerate launch -m lmforge sft ...`
work too: a process that already has a rank is never re-launched.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from lmforge.errors import ArgumentError

LAUNCHED_COMMANDS = ('sft', 'pt', 'rlhf')
HERE = os.path.dirname(os.path.abspath(__file__))


def torchrun_command(command: str, argv: list[str], env=os.environ) -> list[str] | None:
    """The torchrun command line for `lmforge command argv`, or None when no re-launch is asked for."""
    if command not in LAUNCHED_COMMANDS or 'LOCAL_RANK' in env or 'RANK' in env:
        return None
    nproc = env.get('NPROC_PER_NODE')
    nnodes = int(env.get('NNODES', '1'))
    if nproc is None and nnodes == 1:
        return None
    if nproc is None:
        nproc = 'gpu' if _cuda_count() else '1'
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', f'--nnodes={nnodes}']
    if nnodes > 1:
        if 'MASTER_ADDR' not in env:
            raise ArgumentError('', 'NNODES > 1 needs MASTER_ADDR (the address of the node with NODE_RANK=0)')
        cmd += [f'--node_rank={env.get("NODE_RANK", "0")}', f'--master_addr={env["MASTER_ADDR"]}',
                f'--master_port={env.get("MASTER_PORT", "29500")}']
    else:
        cmd += ['--standalone'] if 'MASTER_PORT' not in env else [f'--master_port={env["MASTER_PORT"]}']
    return cmd + ['-m', 'lmforge', command, *argv]


def relaunch(command: str, argv: list[str]) -> int | None:
    """Run `lmforge command argv` under torchrun when NPROC_PER_NODE/NNODES ask for it; return its exit code."""
    cmd = torchrun_command(command, argv)
    if cmd is None:
        return None
    print(f'[lmforge] launching: {shlex.join(cmd)}', flush=True)
    return subprocess.call(cmd)


def _cuda_count() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except ImportError:
        return 0


def is_main_process() -> bool:
    return int(os.environ.get('RANK', '0')) == 0


def deepspeed_config(value: str | None) -> str | dict | None:
    """A preset name -> the bundled config (its "auto" values are filled by transformers from the training
    arguments: batch size, accumulation, clipping, dtype); a path -> the user's JSON, as is."""
    if value is None:
        return None
    import importlib.util
    if importlib.util.find_spec('deepspeed') is None:
        raise ArgumentError('deepspeed', 'needs the deepspeed package: pip install deepspeed (on a CUDA machine)')
    if os.path.isfile(value):
        return value
    with open(os.path.join(HERE, 'deepspeed', f'{value}.json'), encoding='utf-8') as f:
        return json.load(f)


def fsdp_config(value: str | None, model, activation_checkpointing: bool) -> dict | None:
    """FSDP2: shard every decoder layer (the class the model itself declares as not to be split)."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding='utf-8') as f:
            return json.load(f)
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    layers = sorted(getattr(base, '_no_split_modules', None) or [])
    if not layers:
        raise ArgumentError('fsdp', f'{type(base).__name__} does not name its decoder-layer class '
                                    '(_no_split_modules); pass an fsdp_config JSON with transformer_layer_cls_to_wrap')
    return {'version': 2, 'auto_wrap_policy': 'TRANSFORMER_BASED_WRAP', 'transformer_layer_cls_to_wrap': layers,
            'cpu_offload': value == 'full_shard_offload', 'activation_checkpointing': activation_checkpointing,
            'reshard_after_forward': True, 'state_dict_type': 'FULL_STATE_DICT'}
