"""How one epoch's samples are split across processes: every sample trained once, none twice.

accelerate gives each process whole per-device batches in turn; when the data set does not fill the last global
batch it completes it with samples from the start of the epoch (``even_batches``), so those are trained twice that
epoch. lmforge's sampler instead ends the epoch's order with *empty* samples (no trained token): the last global
batch holds the remaining real samples followed by these, which add nothing to the loss or the gradient because the
loss is a sum over trained tokens divided by the step's trained-token count across processes. So N processes with
per-device batch B train exactly what one process with batch N x B trains, step for step, remainder included, and
an epoch is ceil(rows / (N x B)) micro-steps as on one process.

Preference and reward trainers (TRL's) average a loss over the rows of each process's batch, so an empty row would
still count in that mean. There the padding rows are copies of a real row, marked (`PaddingRow`): the collated batch
carries which rows they are (``lmforge_padding``), `PaddingRowsMixin` makes the model's hidden states for those rows
constants (no gradient flows from them) and multiplies the gradient of the step by rows / real rows. Each process's
gradient is then its real rows' share of the mean over the step's real rows, as on one process. Their loss *values*
still enter the logged loss and TRL's metrics of an epoch's last step (as a repeated row's did); only the gradient
is exact.

``LMFORGE_TRACE_SAMPLES=DIR`` (off by default; for tests and debugging) makes each process write
``DIR/rank-<R>.jsonl``: one line per trained micro-batch with the step, the epoch and the tokens of each sample in it,
and at the end the digest of every weight the process holds.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

from transformers import TrainerCallback

from lmforge.templates import IGNORE_INDEX

TRACE_ENV = 'LMFORGE_TRACE_SAMPLES'


def tail_padding(trainer) -> int:
    """How many empty samples complete the last global batch of an epoch (0: nothing to do)."""
    args, dataset = trainer.args, trainer.train_dataset
    config = trainer.accelerator.dataloader_config
    if args.world_size <= 1 or args.dataloader_drop_last or not hasattr(dataset, '__len__') or len(dataset) == 0:
        return 0
    if getattr(args, 'train_sampling_strategy', 'random') != 'random' or config.split_batches or \
            config.dispatch_batches or not config.even_batches:
        return 0
    global_batch = args.per_device_train_batch_size * args.world_size
    return math.ceil(len(dataset) / global_batch) * global_batch - len(dataset)


def tail_padded_dataloader(trainer, marked: bool = False):
    """The Trainer's training dataloader over the data set followed by ``tail_padding`` empty samples, in the
    order the Trainer would use on one process; None when no padding is needed. ``marked``: the padding samples are
    `PaddingRow` copies of the first one, flagged in each batch as ``lmforge_padding`` (see `PaddingRowsMixin`)."""
    pad = tail_padding(trainer)
    if not pad or (marked and trainer.args.remove_unused_columns):  # that would drop the marks: keep the repeats
        return None
    dataset = TailPadded(trainer.train_dataset, pad, PaddingRow(trainer.train_dataset[0]) if marked else None)
    sampler = TailPaddedSampler(_seedable(trainer, trainer._get_train_sampler(trainer.train_dataset)), dataset.n, pad)
    collator = trainer.data_collator
    if marked:  # lmforge trains with remove_unused_columns=False: this is the collate function the loader calls
        trainer.data_collator = MarkPadding(collator)
    try:
        loader = trainer._get_dataloader(dataset=dataset, description='Training', batch_size=trainer._train_batch_size,
                                         sampler_fn=lambda _: sampler, is_training=True)
    finally:
        trainer.data_collator = collator
    if hasattr(loader, 'set_sampler'):
        # as accelerate does for the sampler it makes seedable: the shard wrapper holds it too, which is where the
        # epoch reaches it when resuming inside an epoch (past accelerate's skip_first_batches wrapper)
        loader.set_sampler(sampler)
    return loader


def _seedable(trainer, sampler):
    """What accelerate turns the Trainer's random sampler into (the same order on every process, reshuffled each
    epoch from the seed); it cannot do that itself once the sampler is wrapped."""
    from accelerate.data_loader import SeedableRandomSampler
    from torch.utils.data import RandomSampler

    config = trainer.accelerator.dataloader_config
    if not isinstance(sampler, RandomSampler) or not config.use_seedable_sampler:
        return sampler
    return SeedableRandomSampler(data_source=sampler.data_source, replacement=sampler.replacement,
                                 num_samples=sampler._num_samples, generator=sampler.generator,
                                 data_seed=config.data_seed)


class TailPadded:
    """The data set, then ``pad`` copies of ``empty``; by default an empty sample: two tokens of the first sample
    with no trained position."""

    def __init__(self, dataset, pad: int, empty: dict | None = None):
        self.dataset, self.n, self.pad, self.empty = dataset, len(dataset), pad, empty
        if empty is None:
            first = dataset[0]
            ids = [int(t) for t in first['input_ids'][:2]]
            self.empty = {'input_ids': ids, 'labels': [IGNORE_INDEX] * len(ids)}
            if 'position_ids' in first:
                self.empty['position_ids'] = list(range(len(ids)))

    def __len__(self):
        return self.n + self.pad

    def __getitem__(self, i):
        return self.dataset[i] if i < self.n else self.empty


class TailPaddedSampler:
    """The inner sampler's order of the real samples, then the empty ones."""

    def __init__(self, sampler, n: int, pad: int):
        self.sampler, self.n, self.pad = sampler, n, pad

    def __iter__(self):
        yield from self.sampler
        yield from range(self.n, self.n + self.pad)

    def __len__(self):
        return self.n + self.pad

    def set_epoch(self, epoch: int):
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)


PADDING_KEY = 'lmforge_padding'


class PaddingRow(dict):
    """A row that only fills the last global batch of an epoch: a copy of a real one, trained with no gradient."""


class MarkPadding:
    """Collate, adding ``lmforge_padding``: a bool per row, True for `PaddingRow` rows."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, features: list) -> dict:
        import torch

        flags = torch.tensor([isinstance(f, PaddingRow) for f in features])
        batch = self.collate([dict(f) if isinstance(f, PaddingRow) else f for f in features])
        batch[PADDING_KEY] = flags
        return batch


class PaddingRowsMixin:
    """For trainers whose loss is a mean over the rows of a process's batch (TRL's DPO, KTO, ORPO, CPO, reward):
    the last global batch of an epoch is completed with marked copies of a real row (`tail_padded_dataloader`), and
    the step's gradient is multiplied by rows / real rows across processes (the logged value stays the batch mean). The padding rows get no gradient: a forward
    hook on the model's backbone replaces their final hidden states with constants. Those are the hidden states
    themselves, detached, where the output head is frozen (LoRA), so the rows keep realistic loss values; zeros where
    the head trains, which would otherwise get a gradient from them (TRL computes log-probabilities from the head's
    weight directly, so the hook cannot sit after the head). The graph stays whole, so every process still joins the
    gradient all-reduce. Put the mixin before the TRL trainer in the bases."""

    _padding_rows = None  # this micro-batch's flags while its loss is computed
    _padding_scale = 1.0  # rows / real rows of the current optimizer step, all processes
    _padding_held = False

    def get_train_dataloader(self):
        # TRL's Liger losses run the backbone inside a fused loss kernel: those keep accelerate's repeats
        loader = None if getattr(self.args, 'use_liger_kernel', False) else tail_padded_dataloader(self, marked=True)
        if loader is None:
            return super().get_train_dataloader()
        backbone, head = _backbone_and_head(self.accelerator.unwrap_model(self.model))
        if not getattr(backbone, '_lmforge_padding_hook', False):
            self._padding_zeros = any(p.requires_grad for p in head.parameters())
            backbone.register_forward_hook(self._hold_padding_rows)
            backbone._lmforge_padding_hook = True
        return loader

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        import torch

        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches and PADDING_KEY in batches[0]:  # on every process alike (the same dataloader)
            counts = torch.tensor([sum(len(b[PADDING_KEY]) for b in batches),
                                   sum(int((~b[PADDING_KEY]).sum()) for b in batches)], device=device)
            rows, real = self.accelerator.reduce(counts, reduction='sum').tolist()
            self._padding_scale = rows / real
        return batches, num_items

    def training_step(self, model, inputs, num_items_in_batch=None):
        flags = inputs.pop(PADDING_KEY, None)
        self._padding_rows = flags if flags is not None and bool(flags.any()) else None
        self._padding_held = False
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._padding_rows = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not model.training or self._padding_scale == 1.0:
            return out
        if self._padding_rows is not None and not self._padding_held:
            raise RuntimeError(f'{type(self).__name__} computed a loss without the backbone forward that holds the '
                               'padding rows')
        loss, rest = (out[0], out[1:]) if return_outputs else (out, ())
        loss = loss + (self._padding_scale - 1) * (loss - loss.detach())  # the gradient scaled, the value as is
        return (loss, *rest) if return_outputs else loss

    def _hold_padding_rows(self, module, args, output):
        import torch

        flags = self._padding_rows
        if flags is None or not torch.is_grad_enabled():  # other batches; reference forwards
            return output
        hidden = output['last_hidden_state']
        if hidden.shape[0] % len(flags):
            raise RuntimeError(f'the backbone saw {hidden.shape[0]} rows for a batch of {len(flags)}')
        self._padding_held = True
        rows = flags.to(hidden.device).repeat(hidden.shape[0] // len(flags))  # chosen and rejected: rows twice
        held = torch.zeros_like(hidden) if self._padding_zeros else hidden.detach()
        output['last_hidden_state'] = torch.where(rows[:, None, None], held, hidden)
        return output


def _backbone_and_head(model):
    """The transformer under the output head (its ``last_hidden_state`` holds one row per sequence) and the head:
    the LM head, or a reward model's score head."""
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    backbone = getattr(base, getattr(base, 'base_model_prefix', ''), None)
    head = base.get_output_embeddings() if hasattr(base, 'get_output_embeddings') else None
    head = head if head is not None else getattr(base, 'score', None)
    if backbone is None or head is None:
        raise RuntimeError(f'{type(base).__name__}: no backbone and output head to hold padding rows at')
    return backbone, head


class SampleTrace(TrainerCallback):
    """``LMFORGE_TRACE_SAMPLES=DIR``: what this process trained, in ``DIR/rank-<R>.jsonl`` (see the module doc)."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f'rank-{os.environ.get("RANK", "0")}.jsonl')

    @classmethod
    def from_env(cls) -> SampleTrace | None:
        directory = os.environ.get(TRACE_ENV)
        return cls(directory) if directory else None

    def _write(self, record: dict) -> None:
        with open(self.path, 'a', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')

    def record(self, state, inputs: dict) -> None:
        """One micro-batch, before the model sees it: the tokens of each sample that has a trained position."""
        ids, labels = inputs['input_ids'].tolist(), inputs['labels'].tolist()
        if 'attention_mask' in inputs:
            samples = [([t for t, m in zip(row_ids, mask) if m], [y for y, m in zip(row_labels, mask) if m])
                       for row_ids, row_labels, mask in zip(ids, labels, inputs['attention_mask'].tolist())]
        else:  # padding-free or packed: a sample starts wherever the position is 0
            samples = []
            for row_ids, row_labels, pos in zip(ids, labels, inputs['position_ids'].tolist()):
                for t, y, p in zip(row_ids, row_labels, pos):
                    if p == 0:
                        samples.append(([], []))
                    samples[-1][0].append(t)
                    samples[-1][1].append(y)
        trained = [s for s, y in samples if any(v != IGNORE_INDEX for v in y)]
        self._write({'step': state.global_step + 1, 'epoch': math.floor(state.epoch or 0), 'samples': trained})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._write({'weights': weight_digests(model)})


def weight_digests(model) -> dict[str, str]:
    """name -> `tensor_digest`, for every entry of the (unwrapped) model's state dict."""
    base = getattr(model, 'module', model)
    return {name: tensor_digest(t) for name, t in base.state_dict().items()}


def tensor_digest(t) -> str:
    """sha256 of a tensor's bytes: equal digests, bit-identical weights."""
    import torch

    return hashlib.sha256(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
