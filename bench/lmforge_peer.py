"""Run lmforge LoRA SFT (or DPO) on the peer benchmark's assets, measured like ms-swift and LLaMA-Factory are.

    .venv/bin/python bench/lmforge_peer.py --assets ASSETS [--task sft|dpo] [--model small-qwen2] [--steps 50]
                                           [--set KEY=VALUE ...] [extra lmforge key=value arguments...]

The same interface as ../shared/bench/peers/swift_train.py and lf_train.py (options: bench_hparams.py there): it
maps bench_hparams.DEFAULTS onto the keyword arguments of lmforge's SDK (`lmforge.sft(...)`, or for --task dpo
`lmforge.rlhf(rlhf_type='dpo', ...)`: the same names as `lmforge sft --help` / `lmforge rlhf --help`), prints the
equivalent `lmforge sft` / `lmforge rlhf` command, and trains with the peers' BenchCallback attached, which
writes the result JSON to $BENCH_OUT in the peers' schema (run it under measure.py to add wall time, peak RSS and
CPU seconds). So it is the third row of the peers' run.sh:

    EXTRA_LABEL=lmforge EXTRA_CMD='.venv/bin/python bench/lmforge_peer.py --assets "$BENCH_ASSETS" \
        --task "$BENCH_TASK" --steps "$BENCH_STEPS" --model "$BENCH_MODEL"' bash ../shared/bench/peers/run.sh A OUT 50

How the callback is attached: lmforge's SDK takes no callbacks argument, so this process replaces
`lmforge.train.trainer.LmTrainer` (sft) by a subclass that adds BenchCallback after the Trainer is built, or (dpo)
wraps `lmforge.workflows.rlhf.build_rlhf` so that the callback is added to the trainer it built, before
`train_rlhf` trains it (nothing in lmforge/ is changed; the training path is lmforge's own: `lmforge.rlhf(...)` ->
run_rlhf -> build_rlhf + train_rlhf).

DPO (`--task dpo`): dpo.jsonl's rows (system/query/response/rejected_response) are read natively by lmforge
(lmforge/data/preference.py, the ms-swift query/response/rejected_response format; no --columns needed); beta
bench_hparams' dpo_beta, loss_type sigmoid, reference = the base model with the fresh adapter disabled (lmforge's
default for a new LoRA adapter, as in both peers). lmforge's DPO is TRL's DPOTrainer (pre-tokenized rows from
lmforge's template): chosen and rejected in one concatenated, right-padded batch of 2 x batch rows, plus a separate
no-grad reference forward per step. BenchCallback counts the non-pad tokens of the policy forward (chosen +
rejected rows); the reference forward runs under no_grad and is not counted, as for the peers. TRL 1.16 (lmforge's)
has no padding-free DPO, so lmforge's `padding_free` does not apply there.

SFT: the token count is the peers' (non-pad tokens of every back-propagated forward): lmforge trains padding-free by
default (the batch as one unpadded row, no attention mask), so BenchCallback counts input_ids.numel() of that row,
which is the batch's non-pad tokens; trained rows are counted as the samples in that row (position ids restarting
at 0). lmforge's own counter (`LmTrainer.tokens_seen`)
is stored next to it as a cross-check.

Differences kept on purpose (framework choices, as the peers keep theirs), and reported in the JSON:
  * lmforge always saves a final checkpoint (adapter + optimizer state + tokenizer + args), the peers run with
    save_strategy no: save_steps is set past the last step so that only this final save happens. It falls inside
    the Trainer's train_runtime (like any save of the last step); `lmforge.final_save_s` says how long it took,
    and `steady_tokens_per_s` (end of step 1 to the end of the last step) leaves it out.
  * after training lmforge writes loss/lr/tokens-per-second plots (matplotlib): in wall time, not in train time
    (`lmforge.after_train_s`).
  * padding-free batches and the LM head on trained positions only (ms-swift also has the latter).
"""
import importlib.metadata
import json
import os
import shlex
import shutil
import sys
import time

T_START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEERS = os.environ.get('BENCH_PEERS') or os.path.normpath(os.path.join(REPO, '..', 'shared', 'bench', 'peers'))
sys.path.insert(0, PEERS)
sys.path.insert(0, REPO)
import bench_hparams  # noqa: E402


def lmforge_kwargs(opts, hp) -> dict:
    if hp['task'] not in ('sft', 'dpo'):
        raise SystemExit(f'lmforge_peer.py: --task {hp["task"]}: only sft and dpo')
    a = opts.assets
    dpo = {}
    if hp['task'] == 'dpo':  # as swift_train.py (--rlhf_type dpo --beta --loss_type sigmoid) and lf_train.py
        dpo = {'rlhf_type': 'dpo', 'beta': hp['dpo_beta'], 'loss_type': ['sigmoid']}
    return {
        **dpo,
        'model': os.path.join(a, hp['model']),
        'dataset': [os.path.join(a, 'sft.jsonl' if hp['task'] == 'sft' else 'dpo.jsonl')],
        'split_dataset_ratio': 0,
        'tuner_type': 'lora',
        'lora_rank': hp['lora_rank'],
        'lora_alpha': hp['lora_alpha'],
        'lora_dropout': hp['lora_dropout'],
        'target_modules': [hp['lora_target']],
        'torch_dtype': hp['dtype'],
        'attn_impl': hp['attn_impl'],
        'max_length': hp['max_length'],
        'per_device_train_batch_size': hp['per_device_batch'],
        'gradient_accumulation_steps': hp['grad_accum'],
        'learning_rate': hp['learning_rate'],
        'lr_scheduler_type': hp['lr_scheduler'],
        'warmup_ratio': hp['warmup_ratio'],
        'weight_decay': hp['weight_decay'],
        'max_grad_norm': hp['max_grad_norm'],
        'optim': hp['optim'],
        'max_steps': hp['steps'],
        'gradient_checkpointing': hp['gradient_checkpointing'],
        'logging_steps': hp['logging_steps'],
        'save_steps': hp['steps'] + 1_000_000,  # no save but lmforge's own final checkpoint
        'report_to': ['none'],
        'dataloader_num_workers': hp['dataloader_workers'],
        'seed': hp['seed'],
        'data_seed': hp['seed'],
        'output_dir': opts.work,
        'overwrite_output_dir': True,
    }


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def cli_equivalent(kwargs: dict, command: str = 'sft') -> str:
    parts = ['lmforge', command]
    for k, v in kwargs.items():
        parts.append(f'--{k}')
        if isinstance(v, list):
            parts += [str(x) for x in v]
        else:
            parts.append(str(v).lower() if isinstance(v, bool) else str(v))
    return shlex.join(parts)


def main():
    opts, hp, rest = bench_hparams.parse('lmforge')
    if not any(a.startswith('--label') for a in sys.argv[1:]) and os.environ.get('BENCH_LABEL'):
        opts.label = os.environ['BENCH_LABEL']  # measure.py's label, so the result and the log agree
        opts.work = os.path.join('/tmp/peers-work', opts.label) if not any(
            a.startswith('--work') for a in sys.argv[1:]) else opts.work
    kwargs = lmforge_kwargs(opts, hp)
    for item in rest:  # pass-through lmforge arguments as key=value (e.g. padding_free=false)
        key, sep, val = item.lstrip('-').partition('=')
        if not sep:
            raise SystemExit(f'extra lmforge arguments are key=value pairs, not {item!r}')
        kwargs[key] = _parse_value(val)
    shutil.rmtree(opts.work, ignore_errors=True)  # a fresh output_dir: no resume, nothing left from an earlier run
    command = 'sft' if hp['task'] == 'sft' else 'rlhf'
    cli = cli_equivalent(kwargs, command)
    print('equivalent command: ' + cli, flush=True)

    import lmforge
    import lmforge.train.trainer as lm_trainer
    import torch
    from bench_callback import BenchCallback
    from lmforge.data import PadCollator

    times = {}

    class LmforgeBenchCallback(BenchCallback):
        """BenchCallback plus: rows counted as samples of a padding-free row; phase times around training."""

        def _count(self, module, args, kwargs):
            before_rows = self.rows
            super()._count(module, args, kwargs)
            pos = kwargs.get('position_ids')
            if self.rows != before_rows and kwargs.get('attention_mask') is None and pos is not None \
                    and pos.dim() == 2 and pos.shape[0] == 1:
                self.rows += int((pos == 0).sum()) - 1  # one padding-free row holds this many samples

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            times['train_begin'] = time.perf_counter()
            super().on_train_begin(args, state, control, model=model, **kwargs)

        def on_save(self, args, state, control, **kwargs):
            times['save_end'] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            times['train_end'] = time.perf_counter()
            super().on_train_end(args, state, control, **kwargs)

    extra = {'framework': 'lmforge', 'framework_version': lmforge.__version__, 'task': hp['task'],
             'hparams': hp, 'framework_args': cli}
    callback = LmforgeBenchCallback(opts.label, extra=extra)
    trainers = []

    class BenchLmTrainer(lm_trainer.LmTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(callback)
            trainers.append(self)

    if command == 'sft':
        lm_trainer.LmTrainer = BenchLmTrainer
    else:
        import lmforge.workflows.rlhf as lm_rlhf
        build_rlhf = lm_rlhf.build_rlhf

        def bench_build_rlhf(args):
            run = build_rlhf(args)
            run.trainer.add_callback(callback)
            trainers.append(run.trainer)
            return run

        lm_rlhf.build_rlhf = bench_build_rlhf  # run_rlhf looks it up in its module at call time
    times['sft_call'] = time.perf_counter()
    result = lmforge.sft(**kwargs) if command == 'sft' else lmforge.rlhf(**kwargs)
    times['sft_return'] = time.perf_counter()

    trainer = trainers[0]
    steps = callback.step_ends
    phases = {
        'launcher_start_to_sft_call_s': times['sft_call'] - T_START,   # imports of lmforge/torch/transformers
        'sft_call_to_train_begin_s': times['train_begin'] - times['sft_call'],  # tokenizer, data, model, LoRA
        'final_save_s': times['save_end'] - steps[-1] if steps and 'save_end' in times else None,
        'train_end_to_sft_return_s': times['sft_return'] - times['train_end'],  # plots, summary
    }
    info = {
        'tokens_seen': trainer.tokens_seen,  # lmforge's own count: must equal trained_tokens
        'padding_free': (not isinstance(trainer.data_collator, PadCollator)) if command == 'sft'
        else bool(getattr(trainer, 'padding_free', False)),
        'use_logits_to_keep': getattr(trainer, 'use_logits_to_keep', None),
        'train_samples': len(trainer.train_dataset),
        'global_step': result['global_step'],
        'train_loss': result['train_loss'],
        'last_checkpoint': result['last_checkpoint'],
        **{k: round(v, 3) if v is not None else None for k, v in phases.items()},
        'torch_threads': torch.get_num_threads(),
    }
    if command == 'rlhf':  # how TRL's DPOTrainer ran: reference forward per step or precomputed, collator
        info.update({
            'trainer_class': type(trainer).__name__,
            'precompute_ref_log_probs': bool(getattr(trainer, 'precompute_ref_logps', False)),
            'ref_model': 'base with adapters disabled' if getattr(trainer, 'ref_model', None) is None
            else type(trainer.ref_model).__name__,
            'peft_adapters': sorted(getattr(trainer.accelerator.unwrap_model(trainer.model), 'peft_config', {})),
            'collator': type(trainer.data_collator).__name__,
            'pad_to_multiple_of': getattr(trainer.data_collator, 'pad_to_multiple_of', None),
            'samples_seen': getattr(trainer, 'samples_seen', None),
        })
    print('LMFORGE_BENCH ' + json.dumps(info), flush=True)
    out = os.environ.get('BENCH_OUT')
    if out and os.path.isfile(out):
        with open(out) as f:
            res = json.load(f)
        res['lmforge'] = info
        try:
            res.setdefault('versions', {})['lmforge'] = importlib.metadata.version('lmforge')
        except importlib.metadata.PackageNotFoundError:
            res.setdefault('versions', {})['lmforge'] = lmforge.__version__
        with open(out, 'w') as f:
            json.dump(res, f, indent=2)
            f.write('\n')
    if info['tokens_seen'] != callback.tokens:
        print(f'WARNING: lmforge counted {info["tokens_seen"]} trained tokens, BenchCallback {callback.tokens}',
              flush=True)


if __name__ == '__main__':
    main()
