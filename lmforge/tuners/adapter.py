"""Bottleneck adapters (Houlsby et al. 2019, the parallel-free "after the MLP" placement) - peft has none.

After each decoder layer's MLP: ``out = mlp(x); out = out + up(act(down(out)))`` with ``up`` zero-initialised, so
the model computes exactly the same function at step 0. Only the adapters train.

The adapters are registered as ``<layer>.mlp_adapter`` submodules and applied by a forward hook on ``<layer>.mlp``,
so the base weights keep their names: a checkpoint is the full model (loadable by transformers, which then ignores
the adapter weights) whose config.json records ``lmforge_bottleneck_adapter``; lmforge's loader re-inserts the
adapters from it (:func:`load_bottleneck_adapters`). Adapters cannot be merged into the weights (non-linear).
"""
from __future__ import annotations

import os

from torch import nn

ACTS = {'gelu': nn.GELU, 'relu': nn.ReLU, 'silu': nn.SiLU}


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, length: int, act: str = 'gelu', dtype=None, device=None):
        super().__init__()
        self.down = nn.Linear(hidden, length, dtype=dtype, device=device)
        self.act = ACTS[act]()
        self.up = nn.Linear(length, hidden, dtype=dtype, device=device)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))


def _decoder_layers(model):
    from lmforge.tuners.llamapro import decoder_layers
    return decoder_layers(model)[1]


def _hook(module, inputs, output):
    adapter = module._lmforge_adapter[0]
    if isinstance(output, tuple):
        return (adapter(output[0]),) + tuple(output[1:])
    return adapter(output)


def insert_bottleneck_adapters(model, length: int, act: str = 'gelu') -> list[str]:
    """Add an adapter after every decoder layer's ``mlp``; returns the adapter parameter names."""
    layers = _decoder_layers(model)
    hidden = model.config.get_text_config().hidden_size
    ref = next(model.parameters())
    for layer in layers:
        mlp = getattr(layer, 'mlp', None) or getattr(layer, 'feed_forward', None)
        if mlp is None:
            from lmforge.errors import ArgumentError
            raise ArgumentError('tuner_type', f'adapter: {type(layer).__name__} has no `mlp` to put adapters after')
        adapter = BottleneckAdapter(hidden, length, act, dtype=ref.dtype, device=ref.device)
        layer.mlp_adapter = adapter
        mlp._lmforge_adapter = [adapter]  # a list: not registered twice as a submodule
        mlp.register_forward_hook(_hook)
    model.config.lmforge_bottleneck_adapter = {'adapter_length': length, 'adapter_act': act}
    return [n for n, _ in model.named_parameters() if '.mlp_adapter.' in n]


def adapter(model, args):
    """Tuner entry: freeze the model, insert the adapters, train only them."""
    for p in model.parameters():
        p.requires_grad_(False)
    insert_bottleneck_adapters(model, args.adapter_length, args.adapter_act)
    for name, p in model.named_parameters():
        p.requires_grad_('.mlp_adapter.' in name)
    return model


def load_bottleneck_adapters(model, path: str):
    """Re-insert the adapters of checkpoint ``path`` into ``model`` (loaded from it by transformers, which skipped
    the adapter weights). The checkpoint's config.json says whether it has any (``lmforge_bottleneck_adapter``);
    a no-op otherwise."""
    config = getattr(model.config, 'lmforge_bottleneck_adapter', None)
    if not config or any('.mlp_adapter.' in n for n, _ in model.named_parameters()):
        return model
    insert_bottleneck_adapters(model, config['adapter_length'], config['adapter_act'])
    state = _read_weights(path, lambda k: '.mlp_adapter.' in k)
    missing = [n for n, _ in model.named_parameters() if '.mlp_adapter.' in n and n not in state]
    if missing:
        from lmforge.errors import ModelError
        raise ModelError(f'{path}: config.json declares bottleneck adapters but the weights lack {missing[0]}')
    ref = next(model.parameters())
    model.load_state_dict({k: v.to(ref.dtype) for k, v in state.items()}, strict=False)
    return model


def _read_weights(path: str, keep) -> dict:
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(path) if f.endswith('.safetensors') and f.startswith('model'))
    out = {}
    for name in files:
        out.update({k: v for k, v in load_file(os.path.join(path, name)).items() if keep(k)})
    return out

