"""Tuners: each entry is one small function that takes the loaded model and the arguments and returns the model
to train. `--tuner_type NAME` picks the entry.

| name      | what trains                                                  | where           | merges |
|-----------|--------------------------------------------------------------|-----------------|--------|
| full      | everything (or what --freeze_parameters/--trainable_parameters select) | here  | -      |
| lora      | LoRA (+ DoRA, rsLoRA, LoRA+, PiSSA/OLoRA/LoftQ/gaussian init) | peft_tuners     | yes    |
| adalora   | SVD-shaped LoRA with rank pruning                            | peft_tuners     | yes    |
| vera      | per-layer scaling vectors over shared random projections     | peft_tuners     | yes    |
| boft      | butterfly orthogonal multipliers                             | peft_tuners     | yes    |
| fourierft | spectral coefficients                                        | peft_tuners     | yes    |
| miss/bone | shared block matrices (bone = miss's former name)            | peft_tuners     | yes    |
| longlora  | LoRA + embeddings/norms, with shifted sparse attention        | longlora        | yes    |
| adapter   | bottleneck adapters after each MLP                           | adapter         | no     |
| llamapro  | new zero-output decoder blocks                               | llamapro        | n/a (a full model) |
| reft      | not available (pyreft pins transformers 4.45)                | args.train      | -      |
"""
from __future__ import annotations

import re

from lmforge.errors import ArgumentError
from lmforge.tuners.adapter import adapter
from lmforge.tuners.llamapro import llamapro
from lmforge.tuners.peft_tuners import adalora, bone, boft, fourierft, longlora, lora, miss, vera


def full(model, args):
    """Every parameter trains, unless --freeze_parameters names it (and --trainable_parameters does not)."""
    freeze = [re.compile(p) for p in getattr(args, 'freeze_parameters', [])]
    train = [re.compile(p) for p in getattr(args, 'trainable_parameters', [])]
    for name, p in model.named_parameters():
        frozen = any(r.match(name) for r in freeze) and not any(r.match(name) for r in train)
        p.requires_grad_(not frozen)
    if freeze or train:
        if not any(p.requires_grad for p in model.parameters()):
            raise ArgumentError('freeze_parameters', 'froze every parameter: nothing would train')
        _check_patterns_match(model, args)
    return model


def _check_patterns_match(model, args):
    names = [n for n, _ in model.named_parameters()]
    for flag in ('freeze_parameters', 'trainable_parameters'):
        for pattern in getattr(args, flag):
            if not any(re.match(pattern, n) for n in names):
                raise ArgumentError(flag, f'{pattern!r} matches no parameter (names look like {names[0]!r})')


def reft(model, args):
    from lmforge.args.train import REFT_UNAVAILABLE
    raise ArgumentError('tuner_type', REFT_UNAVAILABLE)


TUNERS = {'full': full, 'lora': lora, 'adalora': adalora, 'vera': vera, 'boft': boft, 'fourierft': fourierft,
          'miss': miss, 'bone': bone, 'longlora': longlora, 'adapter': adapter, 'llamapro': llamapro, 'reft': reft}


def prepare_model(model, args):
    """Wrap ``model`` with the tuner ``args.tuner_type``; returns (model, trainable params, total params)."""
    from lmforge.tuners.quant import prepare_quantized

    model = prepare_quantized(model, args)
    model = TUNERS[args.tuner_type](model, args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return model, trainable, total
