"""Tuners: each entry is one small function that takes the loaded model and the arguments and returns the model
to train. `--tuner_type NAME` picks the entry."""
from __future__ import annotations

from lmforge.errors import ArgumentError


def full(model, args):
    """Every parameter trains."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def lora(model, args):
    """LoRA adapters (peft) on --target_modules; `all-linear` means every linear layer of the decoder."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if args.adapters:  # continue training existing adapters
        return PeftModel.from_pretrained(model, args.adapters[0], is_trainable=True)
    targets = args.target_modules
    target = 'all-linear' if targets == ['all-linear'] else targets
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=target, modules_to_save=args.modules_to_save or None, task_type='CAUSAL_LM')
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ArgumentError('target_modules', f'{e}') from None


TUNERS = {'full': full, 'lora': lora}


def prepare_model(model, args):
    """Wrap ``model`` with the tuner ``args.tuner_type``; returns (model, trainable params, total params)."""
    model = TUNERS[args.tuner_type](model, args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return model, trainable, total
