"""Batching: right padding, or padding-free (the whole batch as one row with per-sample position ids).

Padding-free changes no result: transformers builds a block-diagonal causal mask from position ids that restart at
0 (SDPA, eager and flash attention alike), so each sample attends only to itself, and the first token of each sample
gets no label, exactly as in a padded batch where position 0 is never a prediction target.
"""
from __future__ import annotations

from lmforge.templates import IGNORE_INDEX


class PadCollator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(s['input_ids']) for s in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, s in enumerate(batch):
            n = len(s['input_ids'])
            ids[i, :n] = torch.tensor(s['input_ids'])
            labels[i, :n] = torch.tensor(s['labels'])
            mask[i, :n] = 1
        if 'position_ids' in batch[0]:
            # Packed rows keep their own positions, and no attention mask: transformers only separates the samples
            # of a row (from position ids restarting at 0) when no mask is given. The padding gets positions
            # 0, 1, ... of its own, so it is one more "sample", with no labels.
            pos = torch.zeros((len(batch), width), dtype=torch.long)
            for i, s in enumerate(batch):
                n = len(s['position_ids'])
                pos[i, :n] = torch.tensor(s['position_ids'])
                pos[i, n:] = torch.arange(width - n)
            return {'input_ids': ids, 'labels': labels, 'position_ids': pos}
        return {'input_ids': ids, 'labels': labels, 'attention_mask': mask}


class PaddingFreeCollator:
    """Concatenate the batch into one row; position ids restart at 0 for each sample. The sample boundaries also go
    along as ``cu_seq_lens_q/k`` and ``max_length_q/k`` (transformers' names), for attention that runs per sample
    (flash-attention varlen, lmforge.train.varlen) instead of masking the whole row."""

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        from lmforge.train.varlen import sequence_bounds

        ids, labels, pos = [], [], []
        for s in batch:
            n = len(s['input_ids'])
            ids += s['input_ids']
            labels += [IGNORE_INDEX] + list(s['labels'][1:])
            pos += s.get('position_ids') or list(range(n))
        bounds = sequence_bounds(pos)
        cu = torch.tensor(bounds, dtype=torch.int32)
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        return {'input_ids': torch.tensor([ids]), 'labels': torch.tensor([labels]),
                'position_ids': torch.tensor([pos]), 'cu_seq_lens_q': cu, 'cu_seq_lens_k': cu,
                'max_length_q': longest, 'max_length_k': longest}
