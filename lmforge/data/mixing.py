"""Several ``--dataset`` values: concatenated (the default) or interleaved.

The flags take both peers' names (--mix_strategy is LLaMA-Factory's, the other two ms-swift's):

    lmforge                                    ms-swift                             LLaMA-Factory
    (nothing) or --mix_strategy concat         (no --interleave_prob)               mix_strategy: concat
    --interleave_prob P1 P2 ...                --interleave_prob P1 P2 ...          mix_strategy: interleave_under
      [--stopping_strategy first_exhausted]      [--stopping_strategy first_...]      interleave_probs: "P1,P2,..."
    --stopping_strategy all_exhausted          --stopping_strategy all_exhausted    mix_strategy: interleave_over
    --stopping_strategy all_exhausted_without_replacement (no equivalent)           mix_strategy: interleave_once
    --mix_strategy interleave_under|over|once  (= the --stopping_strategy lines above)

Interleaving follows `datasets.interleave_datasets`: each next sample comes from dataset i with probability P_i
(normalised; without --interleave_prob the datasets take turns). ``first_exhausted`` (undersampling) stops as soon
as one dataset has given its last sample; ``all_exhausted`` (oversampling) starts an exhausted dataset again from
its beginning and stops once every dataset has been given in full at least once;
``all_exhausted_without_replacement`` gives every sample exactly once, drawing among the datasets not yet exhausted.
The draws are seeded (--data_seed, default --seed): the same mixture every run.

What is mixed are the *encoded samples* of each dataset (in memory: after the per-dataset cache; with --streaming:
the samples as they are encoded), so the proportions are those of usable training samples, not of raw rows some of
which may be invalid. Validation data (--val_dataset) is always concatenated: every validation sample counts once.
"""
from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from lmforge.args.train import MIX_STRATEGIES, STOPPING_STRATEGIES as STOPPING


@dataclass(frozen=True)
class Mix:
    """How the training datasets are combined: ``stopping`` None = concatenate; ``probs`` None = take turns."""
    stopping: str | None = None
    probs: tuple | None = None

    @property
    def interleaved(self) -> bool:
        return self.stopping is not None

    def describe(self, n: int) -> str:
        if not self.interleaved:
            return f'{n} datasets concatenated'
        how = 'taking turns' if self.probs is None else \
            'with probabilities ' + ', '.join(f'{p:.3g}' for p in self.probs)
        return f'{n} datasets interleaved {how}, stopping: {self.stopping}'


def interleave(sources: list[Callable[[], Iterable]], probs=None, stopping: str = 'first_exhausted',
               seed: int = 42) -> Iterator:
    """Items of several sources, mixed as `datasets.interleave_datasets` mixes datasets. ``sources`` are callables
    returning a fresh iterable of each source (``all_exhausted`` starts an exhausted source again). A source that is
    empty from the start counts as exhausted (``all_exhausted`` then gives nothing: it could never be given in
    full)."""
    if stopping not in STOPPING:
        raise ValueError(f'stopping must be one of {STOPPING}, got {stopping!r}')
    n = len(sources)
    rng = random.Random(seed)
    bounds = None
    if probs is not None:
        total = float(sum(probs))
        bounds = list(itertools.accumulate(p / total for p in probs))
    iterators = [iter(src()) for src in sources]
    nexts = [next(it, _END) for it in iterators]  # one item ahead: a source is exhausted when it gives its last
    exhausted = [x is _END for x in nexts]
    if n == 0 or (stopping == 'all_exhausted' and any(exhausted)):
        return
    stop = any if stopping == 'first_exhausted' else all
    turn = 0
    while not stop(exhausted):
        if bounds is None:
            i, turn = turn, (turn + 1) % n
        else:
            i = min(bisect.bisect_right(bounds, rng.random()), n - 1)
        if nexts[i] is _END:  # without replacement: a finished source is passed over
            continue
        item = nexts[i]
        nexts[i] = next(iterators[i], _END)
        if nexts[i] is _END:
            exhausted[i] = True
            if stopping == 'all_exhausted':
                iterators[i] = iter(sources[i]())
                nexts[i] = next(iterators[i], _END)
        yield item


_END = object()


def mix_indices(sizes: list[int], mix: Mix, seed: int) -> list[tuple[int, int]]:
    """``(dataset, sample)`` pairs of an in-memory mixture of datasets of ``sizes`` samples."""
    if not mix.interleaved:
        return [(d, i) for d, size in enumerate(sizes) for i in range(size)]
    sources = [(lambda d=d, size=size: ((d, i) for i in range(size))) for d, size in enumerate(sizes)]
    return list(interleave(sources, mix.probs, mix.stopping, seed))


def mix_samples(parts: list, specs: list[str], mix: Mix, seed: int):
    """One training set from the encoded samples of each dataset (lists of dicts, or `TokenStore`s, one per spec of
    ``specs``). Interleaving needs samples in every dataset: one without any is a `DataError` naming it."""
    from lmforge.data.store import TokenStore
    from lmforge.errors import DataError

    if mix.interleaved and len(parts) > 1:
        for spec, part in zip(specs, parts):
            if not len(part):
                raise DataError(f'--dataset {spec}: no usable samples, so it cannot be interleaved with the other '
                                f'datasets (--stopping_strategy {mix.stopping}); fix or drop it')
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, TokenStore) for p in parts):
        joined = parts[0]
        for p in parts[1:]:
            joined = joined.concat(p)
        if not mix.interleaved:
            return joined
        starts = list(itertools.accumulate([0] + [len(p) for p in parts]))
        return joined.select([starts[d] + i for d, i in mix_indices([len(p) for p in parts], mix, seed)])
    return [parts[d][i] for d, i in mix_indices([len(p) for p in parts], mix, seed)]


def mix_of(args) -> Mix:
    """The `Mix` of an args object (--interleave_prob, --stopping_strategy, --mix_strategy), checked by
    `lmforge.args.train.DataArgs.validate_data`."""
    probs = tuple(getattr(args, 'interleave_prob', None) or ()) or None
    stopping = getattr(args, 'stopping_strategy', None)
    strategy = getattr(args, 'mix_strategy', None)
    if strategy == 'concat':
        return Mix()
    if strategy:
        stopping = stopping or MIX_STRATEGIES[strategy]
    elif probs and not stopping:
        stopping = 'first_exhausted'  # ms-swift's default
    return Mix(stopping, probs) if stopping else Mix()
