"""Training metrics: peak memory, MFU, the logging.jsonl writer and the end-of-run plots."""
from __future__ import annotations

import json
import os
import resource
import sys

from transformers import TrainerCallback

# Dense bf16 peak FLOP/s (no sparsity) of common accelerators, by a substring of torch.cuda.get_device_name().
GPU_PEAK_FLOPS = {'H200': 989e12, 'H100': 989e12, 'H800': 989e12, 'A100': 312e12, 'A800': 312e12, 'L40S': 362e12,
                  'L40': 181e12, 'A10G': 125e12, 'A10': 125e12, 'L4': 121e12, '4090': 165e12, '3090': 71e12,
                  'V100': 125e12, 'T4': 65e12, 'B200': 2250e12, 'MI300X': 1307e12}


def peak_memory_mb() -> float:
    """CUDA max allocated where training runs on a GPU; else the process's peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == 'darwin' else rss / 2**10


def device_peak_flops(device: str, dtype) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from): the table for known GPUs, else a measured matmul peak."""
    import torch

    if device == 'cuda':
        name = torch.cuda.get_device_name()
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return (flops if dtype in (torch.bfloat16, torch.float16) else flops / 2), f'table ({name})'
    import time
    n = 1024
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        a @ b
        reps += 1
    if device == 'cuda':
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0), f'measured {n}x{n} matmul on {device}'


class MfuMeter:
    """Model FLOPs utilisation from tokens/s.

    FLOPs per trained token: full fine-tuning 6 N (forward 2N, backward 4N); LoRA 4 N_frozen + 6 N_trainable
    (the frozen weights need no weight gradient, only the activation gradient: 2N forward + 2N backward).
    Attention's sequence-length term is left out, as in the usual 6N estimate.
    """

    def __init__(self, n_total: int, n_trainable: int, peak_flops: float):
        frozen = n_total - n_trainable
        self.flops_per_token = 4 * frozen + 6 * n_trainable
        self.peak = peak_flops

    def __call__(self, tokens_per_second: float) -> float:
        return tokens_per_second * self.flops_per_token / self.peak


class JsonlLogger(TrainerCallback):
    """One JSON object per logging step in output_dir/logging.jsonl (training and evaluation logs)."""

    def __init__(self, path: str):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {'step': state.global_step, 'epoch': round(state.epoch or 0, 4), **logs}
        with open(self.path, 'a', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')


def plot_logs(jsonl_path: str, out_dir: str) -> list[str]:
    """PNG plots of loss, learning rate and tokens/s against the step; returns the files written."""
    if not os.path.isfile(jsonl_path):
        return []
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    with open(jsonl_path, encoding='utf-8') as f:
        records = [json.loads(line) for line in f if line.strip()]
    written = []
    for key, name in (('loss', 'loss.png'), ('eval_loss', 'eval_loss.png'), ('learning_rate', 'learning_rate.png'),
                      ('tokens_per_second', 'tokens_per_second.png')):
        points = [(r['step'], r[key]) for r in records if key in r]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*points), marker='o' if len(points) < 30 else None)
        ax.set_xlabel('step')
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
