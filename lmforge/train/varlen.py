"""Per-sample attention for padding-free batches (SDPA, any device).

A padding-free batch is one row holding several samples. transformers' SDPA path separates them with a block-diagonal
mask over the whole row, so every layer still computes all N x N scores of the row and throws most away: at 16
samples of ~300 tokens that is 16x the work attention needs. This attention function runs SDPA on each sample's own
slice instead (``cu_seq_lens_q``: the sample boundaries the padding-free collator passes, the same keyword
transformers' flash-attention varlen path reads), which gives the same result (tested to the float) at the cost of
the samples alone.

Anything else (a padded batch, generation with a cache, a sliding window shorter than a sample, attention sinks) goes
to transformers' own SDPA function with the mask the model built, so the model stays correct outside padding-free
training too. The mask builder stays SDPA's: the block mask of a packed row is still built once per forward (N^2
booleans), only not used here.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

NAME = 'lmforge_sdpa_varlen'
_BOUNDS: list = [None, None]  # the last cu_seq_lens tensor and its list: read once per forward, not once per layer


def enable_varlen_attention(model) -> bool:
    """Switch an SDPA model to per-sample attention for padding-free batches; False where it does not apply (another
    attention implementation was chosen, or the architecture does not use transformers' attention interface)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    if getattr(base.config, '_attn_implementation', None) != 'sdpa':
        return False
    try:
        source = inspect.getsource(inspect.getmodule(type(base)))
    except (OSError, TypeError):
        return False
    if 'ALL_ATTENTION_FUNCTIONS' not in source:
        return False
    AttentionInterface.register(NAME, varlen_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    base.set_attn_implementation(NAME)
    return True


def disable_varlen_attention(model) -> None:
    """Back to plain SDPA (before saving or generating outside training)."""
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    if getattr(base.config, '_attn_implementation', None) == NAME:
        base.set_attn_implementation('sdpa')


def sequence_bounds(position_ids: list[int]) -> list[int]:
    """Sample boundaries of one padding-free row, from positions that restart at 0: [0, end_1, ..., N]."""
    bounds = [i for i, p in enumerate(position_ids) if p == 0] or [0]
    if bounds[0] != 0:
        bounds.insert(0, 0)
    return bounds + [len(position_ids)]


def _bounds(cu_seq_lens) -> list[int]:
    """The boundaries as Python ints; every layer of a forward gets the same tensor, so on a GPU this waits for
    the device once per forward instead of once per layer."""
    if _BOUNDS[0] is not cu_seq_lens:
        _BOUNDS[:] = [cu_seq_lens, cu_seq_lens.tolist()]
    return _BOUNDS[1]


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, cu_seq_lens_q=None, **kwargs):
    """transformers' attention-function contract: (b, heads, T, d) in, (b, T, heads, d) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len = query.shape[2]
    window = kwargs.get('sliding_window')
    usable = (cu_seq_lens_q is not None and query.shape[0] == 1 and key.shape[2] == q_len
              and kwargs.get('s_aux') is None)
    bounds = _bounds(cu_seq_lens_q) if usable else None
    if usable and (bounds[-1] != q_len or (window and max(b - a for a, b in zip(bounds, bounds[1:])) > window)):
        usable = False
    if not usable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, cu_seq_lens_q=cu_seq_lens_q, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    dropout = dropout if module.training else 0.0
    out = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                          dropout_p=dropout, scale=scaling, enable_gqa=gqa)
           for a, b in zip(bounds, bounds[1:]) if b > a]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None
