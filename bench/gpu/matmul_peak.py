# From ../shared/bench/gpu/matmul_peak.py (the GPU benchmark recipe shared with lmforge), unchanged.
"""Measured bf16 matmul peak of this GPU: an 8192 x 8192 x 8192 product on random data.

    python matmul_peak.py        # prints {"tflops": ..., ...}
"""
import json

import torch


def main(n: int = 8192, warmup: int = 5, iters: int = 50):
    a = torch.randn(n, n, device='cuda', dtype=torch.bfloat16)
    b = torch.randn(n, n, device='cuda', dtype=torch.bfloat16)
    for _ in range(warmup):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / iters
    print(json.dumps({'n': n, 'iters': iters, 'ms_per_matmul': round(ms, 4), 'tflops': round(2 * n**3 / ms / 1e9, 1),
                      'device': torch.cuda.get_device_name(), 'torch': torch.__version__}))


if __name__ == '__main__':
    main()
