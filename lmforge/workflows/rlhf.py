"""`lmforge rlhf --rlhf_type dpo|orpo|simpo|cpo|kto|rm|ppo|grpo|gkd`: the SFT workflow's steps, with TRL's trainers.

output dir check -> model (a dir, hub id or lmforge checkpoint) -> tokenizer + chat template -> plugins and reward
functions -> data, tokenized through the template (every data error before any weights load) -> policy + tuner ->
reference / reward / teacher models -> trainer (lmforge's logging and atomic checkpoints) -> train -> summary.

What each method needs and logs is in `lmforge.rlhf` (trainers, data, rewards, ppo).

References: a fresh LoRA adapter's reference is the base with adapters disabled (no second copy); continuing an
adapter (``--model``/``--adapters`` LoRA checkpoint) keeps the starting adapter as the reference; full fine-tuning
uses a frozen copy; ``--ref_model`` names another. Rollouts (grpo, ppo, gkd) are sampled with transformers'
``generate`` on the training device, stopping on the chat template's end-of-turn tokens (what the pt engine does);
grpo can use vLLM instead (``--use_vllm``, CUDA and the vllm package needed).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from lmforge.args.parse import from_kwargs
from lmforge.args.rlhf import RlhfArgs
from lmforge.errors import ArgumentError
from lmforge.workflows.sft import (_ListDataset, _training_args, fit_and_report, log, main_process_first,
                                   prepare_output_dir, save_checkpoint_extras)

NEEDS_REFERENCE = ('dpo', 'kto', 'grpo', 'ppo')


def rlhf(config: str | None = None, **kwargs) -> dict:
    """Python SDK: ``rlhf(rlhf_type='dpo', model=..., dataset=[...], beta=0.1)``; the names of
    `lmforge rlhf --help`."""
    return run_rlhf(from_kwargs(RlhfArgs, config, **kwargs))


@dataclass
class RlhfRun:
    """Everything `build_rlhf` set up: the trainer ready to `train`, and what it was built from."""
    trainer: object
    model: object
    tokenizer: object
    train_rows: list
    val_rows: list
    model_dir: str
    resume: str | None
    stop: object


def run_rlhf(args: RlhfArgs) -> dict:
    run = build_rlhf(args)
    return train_rlhf(args, run)


def build_rlhf(args: RlhfArgs) -> RlhfRun:
    """Steps up to the trainer (output dir, tokenizer, data, models); nothing trains yet."""
    from lmforge.models import load_tokenizer, pick_device, pick_dtype, resolve_checkpoint
    from lmforge.rlhf.data import build_rlhf_datasets
    from lmforge.rlhf.plugins import load_plugins, resolve_reward_funcs
    from lmforge.templates import apply_template
    from lmforge.tuners.features import preflight

    kind = args.rlhf_type
    device = pick_device()
    preflight(args, device)
    if args.use_vllm:
        _check_vllm(device)
    with main_process_first(args):
        resume = prepare_output_dir(args)
        bundle = resolve_checkpoint(args.model, args.adapters, use_hf=args.use_hf, revision=args.model_revision,
                                    token=args.hub_token)
        model_dir = bundle.base_dir
        log(f'model: {model_dir}' + (f' + adapters {", ".join(bundle.adapters)}' if bundle.adapters else ''))
        tokenizer = load_tokenizer(bundle.tokenizer_dir, args.trust_remote_code)
        log(f'chat template: {apply_template(tokenizer, args.template)}')
        reward_funcs = resolve_reward_funcs(args.reward_funcs, args, load_plugins(args.external_plugins))
        train_rows, val_rows = build_rlhf_datasets(args, tokenizer, log=log)
        _check_reward_columns(args, train_rows)
        _check_enough_prompts(args, train_rows)

    import transformers

    dtype = pick_dtype(args.torch_dtype, device)
    transformers.set_seed(args.seed)
    model, merged_adapters = _load_policy(args, bundle, dtype)
    fresh_adapter = _is_identity_lora(model)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log(f'rlhf: {kind}; device: {device}, dtype: {str(dtype).replace("torch.", "")}, tuner: {args.tuner_type}, '
        f'trainable parameters: {n_trainable:,} of {n_total:,} ({100 * n_trainable / n_total:.2f}%)')
    if kind != 'rm':
        from lmforge.templates import stop_token_ids
        base = model.get_base_model() if hasattr(model, 'get_base_model') else model
        base.generation_config.eos_token_id = stop_token_ids(tokenizer, base.generation_config)
        base.generation_config.pad_token_id = tokenizer.pad_token_id

    ref_model = None
    if args.ref_model:
        ref_model = _load_frozen(args.ref_model, args, 'ref_model')
        log(f'reference model: {args.ref_model}')
    elif kind in NEEDS_REFERENCE and not (kind == 'grpo' and args.beta_value == 0):
        if fresh_adapter:
            log('reference model: the base model with the LoRA adapters disabled (no second copy)')
        elif hasattr(model, 'peft_config') and kind in ('dpo', 'grpo'):
            log('reference model: the starting adapters, copied by TRL into a frozen "ref" adapter')
        else:
            log('reference model: a frozen copy of the starting model')
            if merged_adapters or kind in ('kto', 'ppo') or hasattr(model, 'peft_config'):
                ref_model = _frozen_copy(model)

    from lmforge.train.metrics import JsonlLogger, MfuMeter, device_peak_flops
    from lmforge.train.trainer import GracefulStop, SaveAtEnd
    from lmforge.tuners.features import training_setup

    peak, peak_source = device_peak_flops(device, dtype)
    log(f'MFU against {peak / 1e12:.2f} TFLOP/s ({peak_source})')
    mfu = MfuMeter(n_total, n_trainable, peak)
    if kind in NEEDS_REFERENCE:
        mfu.flops_per_token += 2 * n_total  # the reference forward
    tuner_setup = training_setup(args, model)
    stop = GracefulStop()
    common = dict(
        callbacks=[JsonlLogger(os.path.join(args.output_dir, 'logging.jsonl')), SaveAtEnd(), stop] +
        tuner_setup.callbacks,
        processing_class=tokenizer, mfu=mfu,
        checkpoint_extras=lambda d: save_checkpoint_extras(d, args, model_dir, model, tokenizer))

    def training_args(config_cls=None, **extra):
        return _training_args(args, dtype, device, has_eval=bool(val_rows), model=model,
                              extra={**tuner_setup.training_args, **extra}, config_cls=config_cls)

    trainer = BUILDERS[kind](args, model, ref_model, train_rows, val_rows, reward_funcs, tokenizer, training_args,
                             common, tuner_setup)
    if fresh_adapter and ref_model is None:
        from lmforge.rlhf.trainers import use_disabled_adapter_as_reference
        use_disabled_adapter_as_reference(trainer)
    return RlhfRun(trainer, model, tokenizer, train_rows, val_rows, model_dir, resume, stop)


def train_rlhf(args: RlhfArgs, run: RlhfRun) -> dict:
    kind = args.rlhf_type
    next_step = 'use it as a reward model: lmforge rlhf --rlhf_type ppo --reward_model {last} ...' if kind == 'rm' \
        else None
    return fit_and_report(run.trainer, run.stop, args, run.model_dir, run.resume, what=f'{kind}, ',
                          next_step=next_step)


# ---------------------------------------------------------------------------------------------- models
def _load_policy(args, bundle, dtype):
    """The model to train, wrapped by the tuner. ``--model``/``--adapters`` LoRA checkpoints: with a LoRA tuner the
    adapter keeps training; otherwise it is merged first. Returns (model, adapters were merged)."""
    from lmforge.models import load_model
    from lmforge.tuners import prepare_model
    from lmforge.tuners.quant import quantization_config

    adapters = list(bundle.adapters)
    keep_training = bool(adapters) and args.tuner_type != 'full'
    if args.rlhf_type == 'rm' and keep_training and _adapter_task(adapters[-1]) != 'SEQ_CLS':
        # a new adapter on top of a merged SFT adapter would have a base that exists nowhere on disk
        raise ArgumentError('model', f'{adapters[-1]} is a causal-LM LoRA checkpoint; a reward model with '
                                     f'--tuner_type {args.tuner_type} needs a plain model under it. Merge it first '
                                     f'(lmforge export --adapters {adapters[-1]} --merge_lora true) or train the '
                                     'reward model with --tuner_type full')
    if keep_training and len(adapters) > 1:
        raise ArgumentError('adapters', f'{args.tuner_type} continues one adapter; got {len(adapters)} '
                                        '(merge the others into a model first: lmforge export)')
    if args.rlhf_type == 'rm':
        model = _load_sequence_classifier(bundle.base_dir, args, adapters if not keep_training else [])
        if keep_training:
            from peft import PeftModel
            return PeftModel.from_pretrained(model, adapters[0], is_trainable=True), False
        return _prepare_reward_model(model, args), bool(adapters)
    model = load_model(bundle.base_dir, torch_dtype=args.torch_dtype, attn_impl=args.attn_impl, device='cpu',
                       trust_remote_code=args.trust_remote_code, adapters=None if keep_training else adapters,
                       quantization_config=quantization_config(args, dtype))
    if adapters and not keep_training:
        model = model.merge_and_unload()
    tuner_args = copy.copy(args)
    tuner_args.adapters = adapters if keep_training else []
    model, _, _ = prepare_model(model, tuner_args)
    return model, bool(adapters) and not keep_training


def _adapter_task(path: str) -> str | None:
    import json

    with open(os.path.join(path, 'adapter_config.json'), encoding='utf-8') as f:
        return json.load(f).get('task_type')


def _is_identity_lora(model) -> bool:
    """A freshly initialised LoRA adapter (every lora_B zero, base weights untouched): disabling it gives exactly
    the starting model, so that is the reference."""
    if not hasattr(model, 'peft_config') or 'default' not in model.peft_config:
        return False
    cfg = model.peft_config['default']
    if type(cfg).__name__ != 'LoraConfig' or cfg.init_lora_weights not in (True, 'gaussian'):
        return False
    bs = [p for n, p in model.named_parameters() if 'lora_B' in n]
    return bool(bs) and all(not p.any() for p in bs)


def _load_sequence_classifier(path: str, args, adapters: list):
    """A one-output sequence classifier (the reward model) on the decoder at ``path``; LoRA ``adapters`` (of the
    causal LM, e.g. an SFT run) are merged in."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmforge.errors import ModelError
    from lmforge.models import load_tokenizer, pick_device, pick_dtype

    dtype = pick_dtype(args.torch_dtype, pick_device())
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype, attn_implementation=args.attn_impl or 'sdpa',
            trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f'could not load {path} as a sequence classifier (reward model): {e}') from None
    for adapter in adapters:
        from peft import PeftConfig, PeftModel
        config = PeftConfig.from_pretrained(adapter)
        if config.task_type != 'SEQ_CLS':  # a causal LM's adapter (an SFT run): its decoder weights apply as they are
            config.task_type = None
        model = PeftModel.from_pretrained(model, adapter, config=config).merge_and_unload()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(path, args.trust_remote_code).pad_token_id
    model.to(torch.device('cpu'))
    return model


def _prepare_reward_model(model, args):
    if args.tuner_type == 'full':
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if args.tuner_type != 'lora':
        raise ArgumentError('tuner_type', f'rm trains with lora or full, not {args.tuner_type}')
    from peft import get_peft_model

    from lmforge.tuners.peft_tuners import lora_config
    config = lora_config(args)
    config.task_type = 'SEQ_CLS'  # the score head trains fully and is saved with the adapter
    return get_peft_model(model, config)


def _load_frozen(spec: str, args, flag: str):
    """A frozen causal LM (reference or teacher: ``flag``) from a model dir, hub id or lmforge checkpoint."""
    from lmforge.models import load_model, resolve_checkpoint

    bundle = resolve_checkpoint(spec, None, use_hf=args.use_hf, flag=flag)
    model = load_model(bundle.base_dir, torch_dtype=args.torch_dtype, attn_impl=args.attn_impl, device='cpu',
                       trust_remote_code=args.trust_remote_code, adapters=bundle.adapters)
    if bundle.adapters:
        model = model.merge_and_unload()
    return _freeze(model)


def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _frozen_copy(model):
    """The starting model, frozen, as a plain model (adapters merged into the copy)."""
    model = copy.deepcopy(model)
    if hasattr(model, 'merge_and_unload'):
        model = model.merge_and_unload()
    return _freeze(model)


def load_reward_model(spec: str, args, device: str):
    """A reward model (an `rlhf --rlhf_type rm` checkpoint, or any one-output sequence classifier) as a reward
    function, with its own tokenizer and chat template."""
    from lmforge.models import load_tokenizer, resolve_checkpoint
    from lmforge.rlhf.rewards import RewardModelReward
    from lmforge.templates import apply_template

    bundle = resolve_checkpoint(spec, None, use_hf=args.use_hf, flag='reward_model')
    model = _load_sequence_classifier(bundle.base_dir, args, bundle.adapters)
    tokenizer = load_tokenizer(bundle.tokenizer_dir, args.trust_remote_code)
    apply_template(tokenizer, None)
    name = os.path.basename(os.path.normpath(spec)) or 'reward_model'
    return RewardModelReward(_freeze(model).to(device), tokenizer, name=name)


def _check_vllm(device: str):
    import importlib.util

    if device != 'cuda':
        raise ArgumentError('use_vllm', f'vLLM generates on CUDA GPUs; this machine has {device}. Drop --use_vllm '
                                        '(generation then runs through transformers).')
    if importlib.util.find_spec('vllm') is None:
        raise ArgumentError('use_vllm', 'needs the vllm package: pip install vllm')


def _check_enough_prompts(args, rows):
    """grpo samples whole groups: with fewer prompts than one optimizer step takes, TRL would train 0 steps."""
    from lmforge.errors import DataError

    if args.rlhf_type != 'grpo' or not hasattr(rows, '__len__'):  # a stream (--streaming) repeats its prompts
        return
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps // args.num_generations
    if len(rows) < per_step:
        raise DataError(f'--dataset: {len(rows)} usable prompts, but each grpo step takes {per_step} '
                        f'(--per_device_train_batch_size x --gradient_accumulation_steps / --num_generations); '
                        'add prompts or lower the batch size')


def _check_reward_columns(args, rows):
    from lmforge.errors import DataError
    from lmforge.rlhf.rewards import NEEDS_SOLUTION

    first = _first_row(rows)
    for name in args.reward_funcs:
        if name in NEEDS_SOLUTION and first is not None and 'solution' not in first:
            raise DataError(f'--reward_funcs {name} compares answers with a "solution" column, and the data has '
                            'none: add it, or map a column to it with --columns \'{"answer": "solution"}\'')


def _first_row(rows):
    """The first training row: of the list, or the one a --streaming dataset checked before training."""
    if hasattr(rows, 'first_sample'):
        return rows.first_sample
    return rows[0] if rows else None


# ---------------------------------------------------------------------------------------------- trainers
def _datasets(train_rows, val_rows, columns=None, transform=None):
    """`datasets` datasets of the encoded rows, each passed through ``transform`` and cut to ``columns``; a
    --streaming train set becomes an IterableDataset."""
    from datasets import Dataset

    def make(rows):
        if hasattr(rows, 'hf_iterable'):
            return rows.hf_iterable(transform, columns)
        if transform:
            rows = [transform(r) for r in rows]
        if columns:
            rows = [{k: r[k] for k in columns} for r in rows]
        return Dataset.from_list(rows)
    return make(train_rows), (make(val_rows) if val_rows else None)


def _optimizers(tuner_setup, model, training_args):
    return (tuner_setup.optimizer(model, training_args), None)


def _build_dpo(args, model, ref_model, train_rows, val_rows, reward_funcs, tokenizer, training_args, common, setup):
    from trl import DPOConfig

    from lmforge.rlhf.trainers import dpo_trainer_class
    loss_type = list(args.loss_type or ['sigmoid'])
    weights = list(args.loss_weights) if args.loss_weights else None
    if args.rpo_alpha is not None:  # RPO: the DPO loss + alpha x NLL of the chosen answers
        weights = (weights or [1.0] * len(loss_type)) + [args.rpo_alpha]
        loss_type.append('sft')
    cfg = training_args(DPOConfig, beta=args.beta_value, loss_type=loss_type, loss_weights=weights,
                        label_smoothing=args.label_smoothing, max_length=args.max_length)
    train, val = _datasets(train_rows, val_rows)
    return dpo_trainer_class()(model=model, ref_model=ref_model, args=cfg, train_dataset=train, eval_dataset=val,
                               optimizers=_optimizers(setup, model, cfg), **common)


def _build_cpo(args, model, ref_model, train_rows, val_rows, reward_funcs, tokenizer, training_args, common, setup):
    from trl.experimental.cpo import CPOConfig

    from lmforge.rlhf.trainers import cpo_trainer_class, legacy_pair_columns
    simpo = args.rlhf_type == 'simpo'
    alpha = args.cpo_alpha if args.cpo_alpha is not None else (0.0 if simpo else 1.0)
    cfg = training_args(CPOConfig, beta=args.beta_value, loss_type='simpo' if simpo else (args.loss_type or
                                                                                          ['sigmoid'])[0],
                        cpo_alpha=alpha, simpo_gamma=args.simpo_gamma, label_smoothing=args.label_smoothing,
                        max_length=args.max_length)
    train, val = _datasets(train_rows, val_rows, transform=legacy_pair_columns)
    return cpo_trainer_class()(model=model, args=cfg, train_dataset=train, eval_dataset=val,
                               optimizers=_optimizers(setup, model, cfg), **common)


def _build_orpo(args, model, ref_model, train_rows, val_rows, reward_funcs, tokenizer, training_args, common, setup):
    from trl.experimental.orpo import ORPOConfig

    from lmforge.rlhf.trainers import legacy_pair_columns, orpo_trainer_class
    cfg = training_args(ORPOConfig, beta=args.beta_value, max_length=args.max_length)
    train, val = _datasets(train_rows, val_rows, transform=legacy_pair_columns)
    return orpo_trainer_class()(model=model, args=cfg, train_dataset=train, eval_dataset=val,
                                optimizers=_optimizers(setup, model, cfg), **common)


def _build_kto(args, model, ref_model, train_rows, val_rows, reward_funcs, tokenizer, training_args, common, setup):
    from trl import KTOConfig

    from lmforge.rlhf.trainers import kto_trainer_class
    loss_type = (args.loss_type or ['kto'])[0]
    if loss_type == 'kto' and args.per_device_train_batch_size < 2:
        raise ArgumentError('per_device_train_batch_size', 'must be at least 2 for kto: its KL term pairs each row '
                                                           'with another completion of the same batch')
    cfg = training_args(KTOConfig, beta=args.beta_value, loss_type=loss_type, desirable_weight=args.desirable_weight,
                        undesirable_weight=args.undesirable_weight, max_length=args.max_length,
                        train_sampling_strategy='sequential')
    train, val = _datasets(train_rows, val_rows)
    return kto_trainer_class()(model=model, ref_model=ref_model, args=cfg, train_dataset=train, eval_dataset=val,
                               optimizers=_optimizers(setup, model, cfg), **common)


def _build_rm(args, model, ref_model, train_rows, val_rows, reward_funcs, tokenizer, training_args, common, setup):
    from trl import RewardConfig

    from lmforge.rlhf.trainers import reward_trainer_class

    def whole(r):  # the reward model reads prompt + answer
        return {'chosen_ids': r['prompt_ids'] + r['chosen_ids'], 'rejected_ids': r['prompt_ids'] + r['rejected_ids']}
    cfg = training_args(RewardConfig, max_length=args.max_length,
                        center_rewards_coefficient=args.center_rewards_coefficient)
    train, val = _datasets(train_rows, val_rows, transform=whole)
    return reward_trainer_class()(model=model, args=cfg, train_dataset=train, eval_dataset=val,
                                  optimizers=_optimizers(setup, model, cfg), **common)


def _online_rewards(args, reward_funcs, tokenizer, device):
    """Reward functions + reward models (as functions), their weights, and the missing-eos penalty."""
    from lmforge.templates import stop_token_ids

    funcs = list(reward_funcs) + [load_reward_model(spec, args, device) for spec in args.reward_model]
    weights = list(args.reward_weights) if args.reward_weights else [1.0] * len(funcs)
    return funcs, weights, stop_token_ids(tokenizer)


def _build_grpo(args, model, ref_model, train_rows, val_rows, reward_funcs, tokenizer, training_args, common, setup):
    from trl import GRPOConfig

    from lmforge.models import pick_device
    from lmforge.rlhf.rewards import make_missing_eos_penalty
    from lmforge.rlhf.trainers import grpo_trainer_class
    funcs, weights, stops = _online_rewards(args, reward_funcs, tokenizer, pick_device())
    if args.missing_eos_penalty:
        funcs.append(make_missing_eos_penalty(args.missing_eos_penalty, stops))
        weights.append(1.0)
    scale = {'group': 'group', 'batch': 'batch', 'none': False}[args.scale_rewards]
    cfg = training_args(GRPOConfig, beta=args.beta_value, num_generations=args.num_generations,
                        max_completion_length=args.max_completion_length, temperature=args.temperature,
                        top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                        epsilon=args.epsilon, epsilon_high=args.epsilon_high, num_iterations=args.num_iterations,
                        scale_rewards=scale, loss_type=(args.loss_type or ['grpo'])[0], reward_weights=weights,
                        log_completions=args.log_completions, use_vllm=args.use_vllm, vllm_mode=args.vllm_mode,
                        vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization)
    keep = [k for k in _first_row(train_rows) if k != 'prompt_ids']  # TRL renders the prompt with the same template
    train, val = _datasets(train_rows, val_rows, columns=keep)
    trainer = grpo_trainer_class()(model=model, reward_funcs=funcs, args=cfg, train_dataset=train, eval_dataset=val,
                                   optimizers=_optimizers(setup, model, cfg), **common)
    if ref_model is not None:
        trainer.ref_model = trainer.accelerator.prepare_model(ref_model, evaluation_mode=True)
    return trainer


def _build_gkd(args, model, ref_model, train_rows, val_rows, reward_funcs, tokenizer, training_args, common, setup):
    from trl.experimental.gkd import GKDConfig

    from lmforge.rlhf.trainers import GkdCollator, gkd_trainer_class
    teacher = _load_frozen(args.teacher_model, args, 'teacher_model')
    log(f'teacher model: {args.teacher_model}')
    cfg = training_args(GKDConfig, temperature=args.temperature, lmbda=args.lmbda, beta=args.beta_value,
                        max_new_tokens=args.max_completion_length, seq_kd=args.seq_kd, max_length=args.max_length,
                        dataset_kwargs={'skip_prepare_dataset': True})
    train, val = _datasets(train_rows, val_rows)
    return gkd_trainer_class()(model=model, teacher_model=teacher, args=cfg, data_collator=GkdCollator(
        tokenizer.pad_token_id), train_dataset=train, eval_dataset=val, optimizers=_optimizers(setup, model, cfg),
        **common)


def _build_ppo(args, model, ref_model, train_rows, val_rows, reward_funcs, tokenizer, training_args, common, setup):
    from lmforge.models import pick_device
    from lmforge.rlhf.ppo import PolicyWithValueHead, PpoTrainer
    funcs, weights, stops = _online_rewards(args, reward_funcs, tokenizer, pick_device())
    wrapper = PolicyWithValueHead(model)
    if val_rows:
        log(f'ppo does not evaluate: the {len(val_rows)} validation prompts are not used')
    cfg = training_args(eval_strategy='no')
    streaming = hasattr(train_rows, 'first_sample')
    if streaming:  # batches are lists of rows: each process reads its own share of the stream (as TRL's trainers)
        cfg.accelerator_config.dispatch_batches = False
    ppo = {k: getattr(args, k) for k in ('num_ppo_epochs', 'num_mini_batches', 'kl_coef', 'cliprange', 'vf_coef',
                                         'cliprange_value', 'gamma', 'lam', 'whiten_rewards', 'missing_eos_penalty',
                                         'temperature', 'top_p', 'top_k', 'max_completion_length')}
    return PpoTrainer(model=wrapper, args=cfg, train_dataset=train_rows if streaming else _ListDataset(train_rows),
                      eval_dataset=None, ref_model=ref_model, reward_funcs=funcs, reward_weights=weights,
                      stop_token_ids=stops, ppo=ppo, optimizers=_optimizers(setup, wrapper, cfg), **common)


BUILDERS = {'dpo': _build_dpo, 'cpo': _build_cpo, 'simpo': _build_cpo, 'orpo': _build_orpo, 'kto': _build_kto,
            'rm': _build_rm, 'grpo': _build_grpo, 'gkd': _build_gkd, 'ppo': _build_ppo}
