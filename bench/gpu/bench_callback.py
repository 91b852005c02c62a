# From ../shared/bench/gpu/bench_callback.py (the GPU benchmark recipe shared with lmforge), unchanged.
"""One measurement for every trainer: a transformers TrainerCallback that counts the non-pad tokens
each optimizer step feeds the model and times the steps, excluding the first `warmup` steps.

Tokens are counted by a forward pre-hook on the trained model: attention_mask.sum() when a 2-D
mask is passed (padded batches), else input_ids.numel() (padding-free batches carry no padding).
Step ends are taken after torch.cuda.synchronize(), so a step's time covers data loading, forward,
backward and the optimizer. Peak memory is torch.cuda.max_memory_allocated() over the process
(model load included). The result is printed as one 'BENCH_RESULT {json}' line and, if
BENCH_OUT is set, appended to that file as a JSON line.
"""
import json
import os
import time

import torch
from transformers import TrainerCallback


class ThroughputCallback(TrainerCallback):

    def __init__(self, label: str, warmup: int = 5, extra: dict = None):
        self.label, self.warmup, self.extra = label, warmup, dict(extra or {})
        self.step_ends, self.step_tokens, self.step_rows = [], [], []
        self._tokens = self._rows = 0
        self._hook = None

    def _count(self, module, args, kwargs):
        mask, ids = kwargs.get('attention_mask'), kwargs.get('input_ids', args[0] if args else None)
        if mask is not None and mask.dim() == 2:
            self._tokens = self._tokens + mask.sum()  # stays on the GPU: no sync inside the step
            self._rows += mask.shape[0]
        elif ids is not None:
            self._tokens = self._tokens + ids.numel()
            self._rows += ids.shape[0]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self.train_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_ends.append(time.perf_counter())
        self.step_tokens.append(int(self._tokens))
        self.step_rows.append(self._rows)
        self._tokens = self._rows = 0

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
        w, n = self.warmup, len(self.step_ends)
        if n <= w:
            raise RuntimeError(f'{n} steps ran, not more than warmup={w}: nothing to measure')
        seconds = self.step_ends[-1] - self.step_ends[w - 1] if w > 0 else self.step_ends[-1] - self.train_begin
        tokens = sum(self.step_tokens[w:])
        step_times = [b - a for a, b in zip(self.step_ends[max(w - 1, 0):], self.step_ends[w:])]
        res = {
            'label': self.label,
            'measured_steps': n - w,
            'warmup_steps': w,
            'tokens': tokens,
            'seconds': round(seconds, 4),
            'tokens_per_s': round(tokens / seconds, 1),
            'tokens_per_step': round(tokens / (n - w), 1),
            'rows_per_step': round(sum(self.step_rows[w:]) / (n - w), 2),
            'median_step_s': round(sorted(step_times)[len(step_times) // 2], 4) if step_times else None,
            'first_step_s': round(self.step_ends[0] - self.train_begin, 2),
        }
        if torch.cuda.is_available():
            res['peak_mem_allocated_gib'] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            res['peak_mem_reserved_gib'] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        res.update(self.extra)
        print('BENCH_RESULT ' + json.dumps(res), flush=True)
        if os.environ.get('BENCH_OUT'):
            with open(os.environ['BENCH_OUT'], 'a') as f:
                f.write(json.dumps(res) + '\n')
