"""LLaMA Pro block expansion (arXiv:2401.02415): add decoder blocks, train only them.

The original blocks are split into --llamapro_num_groups groups; after the last block of each group a copy of it is
inserted with its output projections (attention o_proj and MLP down_proj, i.e. every linear layer writing into the
residual stream) zeroed, so each new block is the identity at step 0 and the model's function is unchanged. Only the
new blocks train. The result is an ordinary model with more layers: checkpoints load with plain transformers.
"""
from __future__ import annotations

import copy

from torch import nn

from lmforge.errors import ArgumentError

OUTPUT_PROJECTIONS = ('o_proj', 'down_proj', 'out_proj', 'dense', 'c_proj', 'w2', 'dense_4h_to_h', 'wo')


def decoder_layers(model) -> tuple[nn.Module, nn.ModuleList]:
    """(owner, layers): the ModuleList of decoder blocks (the longest ModuleList whose length is the config's
    num_hidden_layers)."""
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    n = base.config.get_text_config().num_hidden_layers
    for module in base.modules():
        for child in module.children():
            if isinstance(child, nn.ModuleList) and len(child) == n:
                return module, child
    raise ArgumentError('tuner_type', f'{type(base).__name__}: found no list of {n} decoder layers')


def _zero_output_projections(block: nn.Module) -> int:
    zeroed = 0
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear) and name.split('.')[-1] in OUTPUT_PROJECTIONS:
            nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            zeroed += 1
    return zeroed


def expand_blocks(model, num_new: int, num_groups: int | None = None) -> list[int]:
    """Insert ``num_new`` zero-output copies; returns the indices of the new blocks in the expanded model."""
    owner, layers = decoder_layers(model)
    n = len(layers)
    groups = num_groups or num_new
    if num_new > n or groups > n or num_new % groups:
        raise ArgumentError('llamapro_num_new_blocks', f'{num_new} new blocks in {groups} groups do not fit a model '
                                                       f'of {n} layers: need new <= layers, groups <= layers and '
                                                       'new blocks a multiple of groups')
    per_group, size = num_new // groups, n // groups
    new_layers, new_idx, sources = [], [], []
    for i, layer in enumerate(layers):
        new_layers.append(layer)
        sources.append(i)
        if (i + 1) % size == 0 and len(new_idx) < num_new:
            for _ in range(per_group):
                sources.append(i)
                block = copy.deepcopy(layer)
                if not _zero_output_projections(block):
                    raise ArgumentError('tuner_type', f'llamapro: {type(block).__name__} has no output projection '
                                                      f'named one of {", ".join(OUTPUT_PROJECTIONS)}')
                new_idx.append(len(new_layers))
                new_layers.append(block)
    for idx, layer in enumerate(new_layers):  # keep the KV-cache slot of each attention right
        for module in layer.modules():
            if hasattr(module, 'layer_idx'):
                module.layer_idx = idx
    name = next(k for k, v in owner.named_children() if v is layers)
    setattr(owner, name, nn.ModuleList(new_layers))
    config = model.config.get_text_config()
    config.num_hidden_layers = len(new_layers)
    layer_types = getattr(config, 'layer_types', None)
    if layer_types:  # per-layer attention kinds (sliding/full): a copy inherits its source's
        config.layer_types = [layer_types[i] for i in sources]
    return new_idx


def llamapro(model, args):
    """Tuner entry: expand, then train only the new blocks."""
    new_idx = expand_blocks(model, args.llamapro_num_new_blocks, args.llamapro_num_groups)
    _, layers = decoder_layers(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for i in new_idx:
        for p in layers[i].parameters():
            p.requires_grad_(True)
    print(f'[lmforge] llamapro: {len(new_idx)} new blocks at layers {new_idx} of {len(layers)}', flush=True)
    return model
