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
DEEPSPEED_MISSING = ('needs the deepspeed package, an optional extra: pip install "lmforge[deepspeed]" (or pip install '
                     'deepspeed), on a machine with CUDA GPUs')
ON_CPU = {flag: f'{what}; this machine has no GPU. Drop --{flag}: NPROC_PER_NODE=N alone trains data-parallel on CPU '
                '(DDP over gloo)' for flag, what in (
                    ('fsdp', 'FSDP shards the model over GPUs (accelerate leaves it off on CPU, so the run would '
                             'silently be plain DDP)'),
                    ('deepspeed', 'lmforge runs DeepSpeed ZeRO on GPUs'))}


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


def relaunch(command: str, argv: list[str], args=None) -> int | None:
    """Run `lmforge command argv` under torchrun when NPROC_PER_NODE/NNODES ask for it; return its exit code.

    Impossible setups (``check_launch``) are refused here, before any process starts. A SIGTERM to this process goes
    on to torchrun, which passes it to every worker: each saves the same step and stops
    (lmforge.train.trainer.GracefulStop)."""
    if args is not None and command in LAUNCHED_COMMANDS:
        check_launch(args)
    cmd = torchrun_command(command, argv)
    if cmd is None:
        if int(os.environ.get('RANK', '0')) != 0:
            quiet_replica()
        return None
    print(f'[lmforge] launching: {shlex.join(cmd)}', flush=True)
    import signal

    # workers get torchrun's grace period to finish their step and save, not 30 s, before it kills them
    env = {'TORCH_ELASTIC_SHUTDOWN_TIMEOUT': '600', **os.environ}
    proc = subprocess.Popen(cmd, env=env)
    # a terminal's Ctrl-C reaches torchrun and the workers directly: this process only waits for them
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: _to_workers(proc, signum)),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _to_workers(torchrun, signum: int) -> None:
    """A SIGTERM to this process (Kubernetes stops a pod through its first process) goes to the workers themselves:
    they save the same step, stop and exit 0, and so does torchrun (signalled itself, it would stop them too but
    report the run as failed)."""
    import psutil

    try:
        workers = psutil.Process(torchrun.pid).children()
    except psutil.Error:
        workers = []
    for worker in workers or [torchrun]:
        try:
            worker.send_signal(signum)
        except (psutil.Error, ProcessLookupError):
            pass


def quiet_replica() -> None:
    """A process other than rank 0: no progress bars of its own (model loading, data sets); rank 0 shows them."""
    os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
    os.environ.setdefault('HF_DATASETS_DISABLE_PROGRESS_BARS', '1')


def check_launch(args) -> None:
    """Sharding setups that cannot work on this machine or with these flags, refused naming the flags."""
    deepspeed, fsdp = getattr(args, 'deepspeed', None), getattr(args, 'fsdp', None)
    if not deepspeed and not fsdp:
        return
    import importlib.util
    if deepspeed and importlib.util.find_spec('deepspeed') is None:
        raise ArgumentError('deepspeed', DEEPSPEED_MISSING)
    _refuse_on_cpu('fsdp' if fsdp else 'deepspeed')
    method, bits = getattr(args, 'quant_method', None), getattr(args, 'quant_bits', None)
    zero3 = bool(deepspeed) and ('zero3' in os.path.basename(deepspeed) or _zero_stage(deepspeed) == 3)
    if method == 'bnb' and bits == 8 and (zero3 or fsdp):
        flag = 'deepspeed' if zero3 else 'fsdp'
        raise ArgumentError(flag, 'shards the weights, and 8-bit bitsandbytes weights (--quant_method bnb '
                                  '--quant_bits 8) cannot be sharded; use --quant_bits 4 (QLoRA stores its 4-bit '
                                  'weights in the training dtype, which shards) or drop the sharding')
    if method == 'bnb' and bits == 4 and (zero3 or fsdp):
        from importlib.metadata import PackageNotFoundError, version

        from packaging.version import Version
        try:
            found = version('bitsandbytes')
        except PackageNotFoundError:  # --quant_method names the missing package itself
            return
        if Version(found) < Version('0.43.0'):
            flag = 'deepspeed' if zero3 else 'fsdp'
            raise ArgumentError(flag, f'sharding 4-bit bitsandbytes weights (--quant_method bnb --quant_bits 4) '
                                      f'needs bitsandbytes >= 0.43.0; found {found}: pip install -U bitsandbytes')


def _refuse_on_cpu(flag: str) -> None:
    from lmforge.models import pick_device
    if pick_device() == 'cpu':
        raise ArgumentError(flag, ON_CPU[flag])


def _zero_stage(path: str) -> int | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f).get('zero_optimization', {}).get('stage')
    except (OSError, ValueError, AttributeError):
        return None


def _cuda_count() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except ImportError:
        return 0


def is_main_process() -> bool:
    return int(os.environ.get('RANK', '0')) == 0


MOE_CONFIG_KEYS = ('num_experts', 'num_local_experts', 'n_routed_experts', 'moe_num_experts')


def find_unused_parameters(args, model) -> bool:
    """``--ddp_find_unused_parameters``, or when unset: True only where a step can leave trainable parameters without
    a gradient: mixture-of-experts models (unrouted experts) and LISA (it freezes layers after DDP wrapped them).
    Elsewhere every trainable parameter is used (PPO's policy and value head included), and DDP's search would cost a
    graph traversal per step and print a warning on every rank."""
    if args.ddp_find_unused_parameters is not None:
        return args.ddp_find_unused_parameters
    if getattr(args, 'lisa_activated_layers', 0):
        return True
    config = getattr(model, 'config', None)
    config = config.get_text_config() if hasattr(config, 'get_text_config') else config
    return any(getattr(config, key, None) for key in MOE_CONFIG_KEYS)


def deepspeed_config(value: str | None) -> str | dict | None:
    """A preset name -> the bundled config (its "auto" values are filled by transformers from the training
    arguments: batch size, accumulation, clipping, dtype); a path -> the user's JSON, as is."""
    if value is None:
        return None
    import importlib.util
    if importlib.util.find_spec('deepspeed') is None:
        raise ArgumentError('deepspeed', DEEPSPEED_MISSING)
    _refuse_on_cpu('deepspeed')
    if os.path.isfile(value):
        return value
    with open(os.path.join(HERE, 'deepspeed', f'{value}.json'), encoding='utf-8') as f:
        return json.load(f)


def fsdp_config(value: str | None, model, activation_checkpointing: bool) -> dict | None:
    """FSDP2: shard every decoder layer (the class the model itself declares as not to be split)."""
    if value is None:
        return None
    _refuse_on_cpu('fsdp')
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
