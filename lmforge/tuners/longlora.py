"""Shifted sparse attention (S2-Attn, LongLoRA, arXiv:2309.12307) as a transformers attention function.

While training, the sequence is cut into groups of ``ratio * length`` tokens and each token attends only inside its
group; half of the heads see the groups shifted by half a group, so information flows between neighbouring groups.
Cost: O(length * group) instead of O(length^2). At inference the model attends normally (plain sdpa).

Masks are built from the tokens' original positions, so a shifted group that wraps around the end of the sequence
never lets a token see a later one, and padding / packed-sample boundaries from the model's own mask are kept.

Allowed architectures: those whose attention goes through transformers' attention interface
(``ALL_ATTENTION_FUNCTIONS``: Llama, Qwen2/3, Mistral, Gemma, Phi3, ...); others get a clear error.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from lmforge.errors import ArgumentError

NAME = 'lmforge_s2attn'
_RATIO = {'value': 0.25}


def _allowed(model) -> bool:
    module = inspect.getmodule(type(model))
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return 'ALL_ATTENTION_FUNCTIONS' in source


def enable_shifted_sparse_attention(model, ratio: float = 0.25) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    if not _allowed(base):
        raise ArgumentError('tuner_type', f'longlora needs an architecture whose attention goes through '
                                          f"transformers' attention interface; {type(base).__name__} does not. "
                                          'Use --tuner_type lora.')
    impl = getattr(base.config, '_attn_implementation', None)
    if impl not in (None, 'sdpa', 'eager', NAME):
        raise ArgumentError('attn_impl', f'longlora replaces the attention with its own (sdpa-based); --attn_impl '
                                         f'{impl} cannot be combined with it: leave --attn_impl unset')
    _RATIO['value'] = ratio
    AttentionInterface.register(NAME, s2_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    base.set_attn_implementation(NAME)


def _group_masks(idx: torch.Tensor, base_mask: torch.Tensor | None, size: int, n: int):
    """Boolean (batch|1, 1, n, size, size) masks for tokens at original positions ``idx`` (n*size, -1 = padding):
    causal by original position, restricted by the model's mask, always allowing a token to see itself."""
    pos = idx.view(n, size)
    valid = pos >= 0
    allowed = (pos[:, :, None] >= pos[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    allowed = allowed[None, None]  # (1, 1, n, G, G)
    if base_mask is not None:
        safe = pos.clamp(min=0)
        rows = base_mask[:, :, safe.reshape(-1)]  # (b, 1, n*G, T)
        rows = rows.view(rows.shape[0], rows.shape[1], n, size, -1)
        cols = safe[None, None, :, None, :].expand(rows.shape[0], rows.shape[1], n, size, size)
        allowed = allowed & torch.gather(rows, 4, cols)
    eye = torch.eye(size, dtype=torch.bool, device=idx.device)
    return allowed | eye


def _grouped(q, k, v, idx, base_mask, size, n, dropout, scaling):
    b, h, _, d = q.shape
    mask = _group_masks(idx, base_mask, size, n)
    q, k, v = (t.reshape(b, h, n, size, d) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(b, h, n * size, d)


def s2_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         is_causal=None, **kwargs):
    """Same contract as transformers' sdpa_attention_forward: (b, heads, T, d) in, (b, T, heads, d) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len, heads = query.shape[2], key.shape[2], query.shape[1]
    if not module.training or q_len != kv_len or q_len < 8 or heads < 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = heads // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    base_mask = None
    if attention_mask is not None:
        base_mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        base_mask = base_mask[:, :, :, :kv_len]
    size = max(2, math.ceil(q_len * _RATIO['value']))
    n = math.ceil(q_len / size)
    pad = n * size - q_len
    idx = torch.arange(q_len, device=query.device)
    if pad:
        query, key, value = (F.pad(t, (0, 0, 0, pad)) for t in (query, key, value))
        idx = torch.cat([idx, idx.new_full((pad,), -1)])
    if base_mask is not None and base_mask.shape[1] != 1:
        base_mask = base_mask[:, :1]
    half = heads // 2
    shift = size // 2
    out_a = _grouped(query[:, :half], key[:, :half], value[:, :half], idx, base_mask, size, n, dropout, scaling)
    rolled = [t[:, half:].roll(-shift, dims=2) for t in (query, key, value)]
    out_b = _grouped(*rolled, idx.roll(-shift), base_mask, size, n, dropout, scaling).roll(shift, dims=2)
    out = torch.cat([out_a, out_b], dim=1)[:, :, :q_len]
    return out.transpose(1, 2).contiguous(), None
