"""How one epoch's samples are split across processes: every sample trained once, none twice.

accelerate gives each process whole per-device batches in turn; when the data set does not fill the last global
batch it completes it with samples from the start of the epoch (``even_batches``), so those are trained twice that
epoch. lmforge's sampler instead ends the epoch's order with *empty* samples (no trained token): the last global
batch holds the remaining real samples followed by these, which add nothing to the loss or the gradient because the
loss is a sum over trained tokens divided by the step's trained-token count across processes. So N processes with
per-device batch B train exactly what one process with batch N x B trains, step for step, remainder included, and
an epoch is ceil(rows / (N x B)) micro-steps as on one process.

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


def tail_padded_dataloader(trainer):
    """The Trainer's training dataloader over the data set followed by ``tail_padding`` empty samples, in the
    order the Trainer would use on one process; None when no padding is needed."""
    pad = tail_padding(trainer)
    if not pad:
        return None
    dataset = TailPadded(trainer.train_dataset, pad)
    sampler = TailPaddedSampler(_seedable(trainer, trainer._get_train_sampler(trainer.train_dataset)), dataset.n, pad)
    loader = trainer._get_dataloader(dataset=dataset, description='Training', batch_size=trainer._train_batch_size,
                                     sampler_fn=lambda _: sampler, is_training=True)
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
    """The data set, then ``pad`` empty samples: two tokens of the first sample with no trained position."""

    def __init__(self, dataset, pad: int):
        self.dataset, self.n, self.pad = dataset, len(dataset), pad
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
