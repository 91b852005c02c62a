"""`lmforge sft` and `lmforge pt`: one function, top to bottom.

output dir check -> model dir -> tokenizer + template -> data (all data errors surface before the model loads)
-> model -> tuner -> Trainer -> train -> final checkpoint, plots, summary.
"""
from __future__ import annotations

import contextlib
import os
import shutil

from lmforge.args import PtArgs, SftArgs, from_kwargs, to_dict
from lmforge.errors import ArgumentError
from lmforge.train.distributed import is_main_process


def log(msg: str) -> None:
    if is_main_process():  # several processes: rank 0 speaks for all
        print(f'[lmforge] {msg}', flush=True)


def main_process_first(args):
    """Under several processes, rank 0 checks the output dir and preprocesses the data first; the others follow
    (and read what it cached). One process: a no-op."""
    if int(os.environ.get('WORLD_SIZE', '1')) == 1:
        return contextlib.nullcontext()
    from datetime import timedelta

    from accelerate import PartialState
    state = PartialState(backend=args.ddp_backend, timeout=timedelta(seconds=args.ddp_timeout))
    return state.main_process_first()


def sft(config: str | None = None, **kwargs) -> dict:
    """Python SDK: ``sft(model=..., dataset=[...], tuner_type='lora', ...)``; the names of `lmforge sft --help`."""
    return run_sft(from_kwargs(SftArgs, config, **kwargs))


def pt(config: str | None = None, **kwargs) -> dict:
    """Python SDK: ``pt(model=..., dataset=[...])``; the names of `lmforge pt --help`."""
    return run_pt(from_kwargs(PtArgs, config, **kwargs))


def run_sft(args: SftArgs) -> dict:
    return train(args, mode='sft')


def run_pt(args: PtArgs) -> dict:
    return train(args, mode='pt')


def prepare_output_dir(args) -> str | None:
    """Refuse to mix runs: an output dir holding another run needs --overwrite_output_dir or resuming.
    Returns the checkpoint to resume from (None for a fresh run)."""
    from lmforge.train.trainer import latest_checkpoint

    out = args.output_dir
    resume = args.resume_from_checkpoint
    if resume == 'latest':
        resume = latest_checkpoint(out)
        if resume is None:
            raise ArgumentError('resume_from_checkpoint', f'"latest": {out} holds no complete checkpoint')
    elif resume:
        if not os.path.isfile(os.path.join(resume, 'trainer_state.json')):
            raise ArgumentError('resume_from_checkpoint', f'{resume} is not a complete checkpoint '
                                                          '(no trainer_state.json)')
    if not is_main_process():  # rank 0 has judged (and maybe cleared) the directory before the others got here
        return resume
    holds_run = os.path.isdir(out) and any(
        n.startswith('checkpoint-') or n in ('args.json', 'logging.jsonl') for n in os.listdir(out))
    if holds_run and not resume:
        if not args.overwrite_output_dir:
            raise ArgumentError('output_dir', f'{out} already holds a training run. Pass --overwrite_output_dir '
                                              'true to replace it, --resume_from_checkpoint latest to continue it, '
                                              'or another --output_dir.')
        log(f'--overwrite_output_dir: removing the previous run in {out}')
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    return resume


def train(args, mode: str) -> dict:
    from lmforge.data import PadCollator, PaddingFreeCollator, build_datasets
    from lmforge.hub import resolve_model
    from lmforge.models import load_model, load_tokenizer, pick_device, pick_dtype
    from lmforge.templates import apply_template

    from lmforge.tuners.features import preflight
    preflight(args, pick_device())  # packages and devices the tuner flags need, before data or weights load
    with main_process_first(args):
        resume = prepare_output_dir(args)
        model_dir = resolve_model(args.model, use_hf=args.use_hf, revision=args.model_revision,
                                  token=args.hub_token)
        log(f'model: {model_dir}')
        tokenizer = load_tokenizer(model_dir, args.trust_remote_code)
        if mode == 'sft':
            log(f'chat template: {apply_template(tokenizer, args.template)}')
        train_data, val_data = build_datasets(args, tokenizer, mode, log=log)
    if getattr(args, 'predict_with_generate', False) and not val_data:
        where = ('--val_dataset gave no usable sample (see the validation data report above)' if args.val_dataset
                 else f'--split_dataset_ratio {args.split_dataset_ratio} held none out of the training data; raise '
                      'it or pass --val_dataset')
        raise ArgumentError('predict_with_generate', f'no validation samples to answer: {where}')

    import transformers

    device = pick_device()
    dtype = pick_dtype(args.torch_dtype, device)
    transformers.set_seed(args.seed)
    from lmforge.tuners.quant import quantization_config
    model = load_model(model_dir, torch_dtype=args.torch_dtype, attn_impl=args.attn_impl, device='cpu',
                       trust_remote_code=args.trust_remote_code, quantization_config=quantization_config(args, dtype))

    from lmforge.tuners import prepare_model
    model, n_trainable, n_total = prepare_model(model, args)
    from lmforge.tuners.features import training_setup
    tuner_setup = training_setup(args, model)  # NEFTune/GaLore/Liger arguments, LISA/AdaLoRA callbacks, LoRA+
    log(f'device: {device}, dtype: {str(dtype).replace("torch.", "")}, tuner: {args.tuner_type}, '
        f'trainable parameters: {n_trainable:,} of {n_total:,} ({100 * n_trainable / n_total:.2f}%)')

    from lmforge.train.trainer import GracefulStop, LmTrainer, SaveAtEnd, supports_logits_to_keep
    padding_free = _padding_free(args, model)
    use_logits_to_keep = args.use_logits_to_keep
    if use_logits_to_keep is None:
        use_logits_to_keep = supports_logits_to_keep(model)
    from lmforge.train.varlen import enable_varlen_attention
    per_sample = padding_free and enable_varlen_attention(model)  # SDPA on each sample, not a masked N x N row
    log(f'batching: {"padding-free (one row per batch, per-sample position ids)" if padding_free else "padded"}'
        f'{", attention per sample" if per_sample else ""}; LM head on trained positions only: {use_logits_to_keep}')
    collator = PaddingFreeCollator() if padding_free else PadCollator(tokenizer.pad_token_id)

    from lmforge.train.metrics import JsonlLogger, MfuMeter, device_peak_flops
    peak, peak_source = device_peak_flops(device, dtype)
    log(f'MFU against {peak / 1e12:.2f} TFLOP/s ({peak_source})')
    training_args = _training_args(args, dtype, device, has_eval=bool(val_data), model=model,
                                   extra=tuner_setup.training_args)
    stop = GracefulStop()
    trainer = LmTrainer(
        model=model, args=training_args,
        train_dataset=_ListDataset(train_data) if hasattr(train_data, '__len__') else train_data,  # streaming: iterable
        eval_dataset=_ListDataset(val_data) if val_data else None, data_collator=collator,
        processing_class=tokenizer, callbacks=[JsonlLogger(os.path.join(args.output_dir, 'logging.jsonl')),
                                               SaveAtEnd(), stop] + tuner_setup.callbacks,
        optimizers=(tuner_setup.optimizer(model, training_args), None),
        use_logits_to_keep=use_logits_to_keep, mfu=MfuMeter(n_total, n_trainable, peak),
        checkpoint_extras=lambda d: save_checkpoint_extras(d, args, model_dir, model, tokenizer))
    if getattr(args, 'predict_with_generate', False):  # generation metrics at each evaluation
        from lmforge.train.generate_eval import setup
        setup(trainer, args, tokenizer, val_data, model, log=log)
    return fit_and_report(trainer, stop, args, model_dir, resume)


def fit_and_report(trainer, stop, args, model_dir: str, resume: str | None, what: str = '',
                   next_step: str | None = None) -> dict:
    """Train, then plot and say where the result is (shared by sft, pt and rlhf). ``next_step`` may name the
    last checkpoint as ``{last}``."""
    from lmforge.train.metrics import plot_logs
    from lmforge.train.trainer import latest_checkpoint, write_json

    if is_main_process():
        write_json(os.path.join(args.output_dir, 'args.json'), {**to_dict(args), 'base_model_dir': model_dir})
    result = trainer.train(resume_from_checkpoint=resume)
    last = latest_checkpoint(args.output_dir)
    plots = plot_logs(os.path.join(args.output_dir, 'logging.jsonl'), args.output_dir) if is_main_process() else []
    log(f'done: {what}{trainer.state.global_step} steps, train loss {result.training_loss:.4f}, '
        f'{trainer.tokens_seen} tokens trained')
    log(f'last checkpoint: {last}')
    if plots:
        log(f'plots: {", ".join(plots)}')
    if stop.signal:
        log(f'stopped by {stop.signal} at step {trainer.state.global_step}; continue with '
            '--resume_from_checkpoint latest')
    log((next_step or 'chat with it: lmforge infer --model {last}').format(last=last))
    return {'output_dir': args.output_dir, 'last_checkpoint': last, 'train_loss': result.training_loss,
            'global_step': trainer.state.global_step, 'log_history': trainer.state.log_history,
            'stopped_by': stop.signal}


def save_checkpoint_extras(ckpt_dir: str, args, model_dir: str, model, tokenizer) -> None:
    """What makes a checkpoint self-describing: the arguments, the base model, the chat template (saved with the
    tokenizer by the Trainer) and the generation config with the template's end-of-turn tokens as eos."""
    import copy

    from lmforge.templates import stop_token_ids
    from lmforge.train.trainer import write_json

    write_json(os.path.join(ckpt_dir, 'args.json'), {**to_dict(args), 'base_model_dir': model_dir})
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    if getattr(base, 'generation_config', None) is not None:  # None for a reward model (sequence classifier)
        gen = copy.deepcopy(base.generation_config)
        if getattr(tokenizer, 'chat_template', None):
            gen.eos_token_id = stop_token_ids(tokenizer, gen)
        gen.pad_token_id = tokenizer.pad_token_id
        gen.save_pretrained(ckpt_dir)
    if not os.path.isfile(os.path.join(ckpt_dir, 'tokenizer_config.json')):
        tokenizer.save_pretrained(ckpt_dir)


def _padding_free(args, model) -> bool:
    """Padding-free batching needs the model to build its attention mask from position ids (transformers'
    masking utilities do, for sdpa/eager/flash attention)."""
    import inspect

    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    supported = 'create_causal_mask' in inspect.getsource(inspect.getmodule(type(base)))
    wanted = args.padding_free if args.padding_free is not None else supported
    if (wanted or args.packing) and not supported:
        flag = 'packing' if args.packing else 'padding_free'
        raise ArgumentError(flag, f'{type(base).__name__} does not build its attention mask from position ids, so '
                                  'samples in one row would attend to each other; turn it off')
    return bool(wanted or args.packing)


def _training_args(args, dtype, device: str, has_eval: bool, model=None, extra: dict | None = None,
                   config_cls=None):
    """The Trainer arguments of a run; ``config_cls``: a TrainingArguments subclass (TRL's configs, for rlhf)
    that gets the same values plus ``extra``."""
    import torch
    from transformers import TrainingArguments

    from lmforge.train.distributed import deepspeed_config, find_unused_parameters, fsdp_config

    report = [r for r in args.report_to if r != 'auto']
    if args.report_to == ['auto']:
        import importlib.util
        report = ['tensorboard'] if importlib.util.find_spec('tensorboard') else []
    if 'none' in report:
        report = []
    kwargs = dict(
        output_dir=args.output_dir, num_train_epochs=args.num_train_epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.lr,
        lr_scheduler_type=args.lr_scheduler_type, warmup_steps=args.warmup_steps or args.warmup_ratio,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, optim=args.optim,
        save_strategy='steps', save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        eval_strategy='steps' if has_eval else 'no', eval_steps=args.eval_steps or args.save_steps,
        metric_for_best_model=getattr(args, 'metric_for_best_model', None) if has_eval else None,
        greater_is_better=getattr(args, 'greater_is_better', None),
        logging_steps=args.logging_steps, logging_first_step=True, seed=args.seed, data_seed=args.data_seed,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        # under FSDP, activation checkpointing is FSDP's own (fsdp_config), not the Trainer's
        activation_checkpointing=args.gradient_checkpointing and not args.fsdp,
        activation_checkpointing_kwargs={'use_reentrant': False} if args.gradient_checkpointing else None,
        deepspeed=deepspeed_config(args.deepspeed), fsdp=bool(args.fsdp) or None,
        fsdp_config=fsdp_config(args.fsdp, model, args.gradient_checkpointing),
        ddp_backend=args.ddp_backend, ddp_timeout=args.ddp_timeout,
        ddp_find_unused_parameters=find_unused_parameters(args, model),
        report_to=report or 'none', dataloader_num_workers=args.dataloader_num_workers,
        dataloader_pin_memory=device != 'cpu',
        use_cpu=device == 'cpu',  # also what makes several CPU processes (torchrun) train as one (gloo)
        remove_unused_columns=False, prediction_loss_only=True, save_only_model=False)
    kwargs.update(extra or {})  # what the tuner flags add (lmforge.tuners.features.training_setup)
    return (config_cls or TrainingArguments)(**kwargs)


class _ListDataset:
    """A list of encoded samples as a map-style dataset."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]
