"""lmforge's row of the GPU benchmark: `lmforge.sft(...)` with bench_callback.ThroughputCallback attached.

    python lmforge_sft_timed.py --model /tmp/bench/model --data /tmp/bench/data.jsonl --gc 0
    python lmforge_sft_timed.py --model M --data D --gc 0 use_liger_kernel=true          # lmforge flags as key=value
    python -m torch.distributed.run --standalone --nproc_per_node 1 lmforge_sft_timed.py --model M --data D --gc 1 \
        tuner_type=full deepspeed=zero3                                                   # one process, ZeRO-3

The hyper-parameters are run_swift.sh's (and hf_baseline.py's): LoRA r 8 / alpha 32 / dropout 0.05 on all linear
layers, bf16, sdpa, max length 1024, batch 8, no accumulation, AdamW lr 1e-4 cosine without warm-up, weight decay
0.1, 35 steps, seed 42, 2 dataloader workers, no eval, logging every 5 steps. lmforge's own choices stay its
defaults and are recorded in the result: padding-free batches (the batch as one row, attention per sample), the LM
head only on trained positions (logits_to_keep), its default optimizer, and its final checkpoint (written after the
last step, so outside the timed steps). Any `lmforge sft` flag can be added as key=value.

The callback is attached the way swift_sft_timed.py does it, by wrapping transformers.Trainer.__init__ (lmforge's
LmTrainer is a Trainer subclass; lmforge's SDK takes no callbacks). One change to the count: a padding-free row
holds several samples, so rows are counted as the samples in it (positions restarting at 0).
"""
import argparse
import functools
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repo root: lmforge itself, not an installed copy


def lmforge_kwargs(a) -> dict:
    return {
        'model': a.model, 'dataset': [a.data], 'split_dataset_ratio': 0, 'tuner_type': 'lora', 'lora_rank': 8,
        'lora_alpha': 32, 'lora_dropout': 0.05, 'target_modules': ['all-linear'],
        'torch_dtype': 'float32' if a.cpu else 'bfloat16', 'attn_impl': a.attn, 'max_length': a.max_len,
        'per_device_train_batch_size': a.bs, 'gradient_accumulation_steps': 1, 'learning_rate': a.lr,
        'lr_scheduler_type': 'cosine', 'warmup_ratio': 0.0, 'weight_decay': 0.1, 'max_steps': a.steps,
        'gradient_checkpointing': bool(a.gc), 'logging_steps': 5, 'save_steps': a.steps + 1_000_000,
        'report_to': ['none'], 'dataloader_num_workers': a.workers, 'seed': 42, 'output_dir': a.out_dir,
        'overwrite_output_dir': True,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', required=True)
    p.add_argument('--data', required=True)
    p.add_argument('--gc', type=int, default=0, help='gradient checkpointing (non-reentrant)')
    p.add_argument('--bs', type=int, default=8, help='per-device batch size')
    p.add_argument('--max_len', type=int, default=1024)
    p.add_argument('--steps', type=int, default=35, help='optimizer steps in all, warmup included')
    p.add_argument('--warmup', type=int, default=int(os.environ.get('BENCH_WARMUP', '5')),
                   help='first steps left out of the timing')
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--workers', type=int, default=2, help='dataloader workers')
    p.add_argument('--attn', default='sdpa')
    p.add_argument('--label', default=None, help='default: "lmforge gc=on|off bs=N" plus the extra flags')
    p.add_argument('--out_dir', default='/tmp/lmforge_out')
    p.add_argument('--cpu', action='store_true', help='CPU smoke test (fp32)')
    a, rest = p.parse_known_args()
    kwargs = lmforge_kwargs(a)
    for item in rest:  # lmforge flags as key=value; lmforge converts the strings to each flag's type
        key, sep, value = item.lstrip('-').partition('=')
        if not sep:
            p.error(f'extra lmforge flags are key=value pairs, not {item!r}')
        kwargs[key] = value
    label = a.label or ' '.join([f'lmforge gc={"on" if a.gc else "off"} bs={a.bs}', *rest])
    print('lmforge.sft(**' + json.dumps(kwargs) + ')', flush=True)

    import transformers
    from bench_callback import ThroughputCallback

    class LmforgeCallback(ThroughputCallback):
        """Rows counted as the samples of a padding-free row; lmforge's choices recorded once training starts."""
        trainer = None

        def _count(self, module, args, kw):
            rows = self._rows
            super()._count(module, args, kw)
            pos = kw.get('position_ids')
            if self._rows != rows and kw.get('attention_mask') is None and pos is not None and pos.shape[0] == 1:
                self._rows += int((pos == 0).sum()) - 1  # one padding-free row holds this many samples

        def on_train_begin(self, args, state, control, model=None, **kw):
            t = self.trainer
            base = t.model.get_base_model() if hasattr(t.model, 'get_base_model') else t.model
            trainable = [p for p in t.model.parameters() if p.requires_grad]
            self.extra.update(
                trainable_params=sum(getattr(p, 'ds_numel', p.numel()) for p in trainable),  # ZeRO-3: sharded
                optim=str(getattr(args.optim, 'value', args.optim)), use_logits_to_keep=t.use_logits_to_keep,
                padding_free=type(t.data_collator).__name__ == 'PaddingFreeCollator',
                attn_impl=base.config._attn_implementation, liger=bool(args.use_liger_kernel),
                deepspeed=bool(args.deepspeed), fsdp=bool(args.fsdp))
            super().on_train_begin(args, state, control, model=model, **kw)

    import peft
    import torch
    callback = LmforgeCallback(label, warmup=a.warmup, extra={
        'framework': 'lmforge', 'gc': bool(a.gc), 'bs': a.bs, 'attn': a.attn, 'lmforge_args': ' '.join(rest),
        'versions': {'transformers': transformers.__version__, 'peft': peft.__version__, 'torch': torch.__version__}})
    init = transformers.Trainer.__init__

    @functools.wraps(init)
    def init_with_callback(self, *args, **kw):
        init(self, *args, **kw)
        callback.trainer = self
        self.add_callback(callback)

    transformers.Trainer.__init__ = init_with_callback
    import lmforge
    result = lmforge.sft(**kwargs)
    print('LMFORGE_RESULT ' + json.dumps({k: result[k] for k in ('last_checkpoint', 'train_loss', 'global_step')}),
          flush=True)


if __name__ == '__main__':
    main()
