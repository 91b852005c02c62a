"""``--streaming``: train on corpora that do not fit in memory.

Rows are read one at a time (`lmforge.data.readers.iter_dataset`: jsonl/txt line by line, csv/parquet/arrow in record
batches, hub datasets with ``streaming=True``), validated and encoded as the trainer asks for them, several
datasets concatenated or interleaved (`lmforge.data.mixing`), shuffled in a buffer of ``--shuffle_buffer_size``
samples, and with ``--packing`` packed greedily into ``--max_length`` sequences. Memory holds the shuffle buffer and a
few packed sequences, never the dataset. A stream has no length, so the run needs ``--max_steps``; each pass over the
data reshuffles with the epoch number added to the seed.

Invalid rows are skipped and counted (the first few are logged with file:row), or stop the run with ``--strict``.
Before the model loads, `check_start` encodes the first rows so that an unusable dataset fails early.
"""
from __future__ import annotations

import functools
import itertools
import random
from typing import Iterator

from lmforge.data.dataset import MAX_SHOWN, DataReport, EncodeJob, _collect, encode_one, pack_items
from lmforge.data.mixing import Mix, interleave
from lmforge.data.readers import iter_dataset
from lmforge.errors import DataError

try:
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - torch is a dependency
    _Base = object

CHECK_ROWS = 1000  # rows encoded before training to catch unusable data early


class StreamingDataset(_Base):
    """The samples of ``specs``, encoded as they are read (see the module doc). Several specs are concatenated or
    interleaved as ``mix`` says (`lmforge.data.mixing`). Subclasses change what a row becomes by overriding
    `encode` (`lmforge.rlhf.data.RlhfStream`)."""

    def __init__(self, specs: list[str], tokenizer, mode: str, *, max_length: int, truncation_strategy: str,
                 loss_scale: str = 'default', system: str | None = None, columns: dict | None = None,
                 strict: bool = False, seed: int = 42, shuffle: bool = True, buffer_size: int = 1000,
                 packing: bool = False, use_hf: bool | None = None, mix: Mix | None = None, log=print):
        self.specs = list(specs)
        self.job = EncodeJob(tokenizer, mode, max_length, truncation_strategy, loss_scale, system, columns, strict)
        self.seed, self.shuffle, self.buffer_size = seed, shuffle, max(1, int(buffer_size))
        self.packing, self.use_hf, self.log = packing, use_hf, log
        self.mix = mix or Mix()
        self.epoch = 0
        self.report = DataReport()
        self.skipped = 0  # invalid rows seen so far
        self.first_sample = None  # set by check_start

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # ---- rows
    def spec_rows(self, spec: str) -> Iterator:
        rows = iter_dataset(spec, use_hf=self.use_hf)
        try:  # several DataLoader workers: each takes every n-th row
            from torch.utils.data import get_worker_info
            info = get_worker_info()
        except ImportError:  # pragma: no cover
            info = None
        if info is not None and info.num_workers > 1:
            rows = itertools.islice(rows, info.id, None, info.num_workers)
        return rows

    # ---- samples
    def encode(self, row, report: DataReport, got: list) -> None:
        """Add the samples of ``row`` to ``got``, counting it in ``report`` (``strict``: an invalid row raises)."""
        _collect(encode_one(row, self.job), report, got, self.job.strict)

    def spec_samples(self, spec: str) -> Iterator[dict]:
        """Encoded samples of one spec, invalid rows counted in ``self.report``."""
        for row in self.spec_rows(spec):
            got: list = []
            before = len(self.report.invalid)
            self.report.rows += 1
            self.encode(row, self.report, got)
            if len(self.report.invalid) > before:
                self.skipped += 1
                if self.skipped <= MAX_SHOWN:
                    self.log(f'streaming: invalid row skipped ({self.skipped} so far): {self.report.invalid[-1]}')
                del self.report.invalid[MAX_SHOWN:]  # memory stays bounded: the first ones are kept, and the count
            self.report.lengths.clear()
            yield from got

    def samples(self) -> Iterator[dict]:
        """Every spec's samples, concatenated or interleaved, then shuffled in the buffer (seed + epoch)."""
        sources = [functools.partial(self.spec_samples, spec) for spec in self.specs]
        if self.mix.interleaved and len(sources) > 1:
            merged = interleave(sources, self.mix.probs, self.mix.stopping, self.seed + self.epoch)
        else:
            merged = itertools.chain.from_iterable(source() for source in sources)
        if self.shuffle:
            merged = shuffle_buffer(merged, self.buffer_size, random.Random(self.seed + self.epoch))
        return merged

    def __iter__(self) -> Iterator[dict]:
        samples = self.samples()
        if not self.packing:
            yield from samples
            return
        yield from pack_stream(samples, self.job.max_length, self.buffer_size)

    def check_start(self, n: int = CHECK_ROWS) -> DataReport:
        """Encode the first rows of each spec (up to ``n`` in all, no shuffling): data whose start holds no usable
        sample fails here, before any model is loaded - any spec when they are interleaved (one without samples
        would end the mixture), all of them when they are concatenated."""
        report, unusable = DataReport(), []
        per_spec = max(1, n // len(self.specs)) if self.specs else n
        for spec in self.specs:
            part, got = DataReport(), []
            for row in itertools.islice(iter_dataset(spec, use_hf=self.use_hf), per_spec):
                part.rows += 1
                self.encode(row, part, got)
                if got and part.rows >= min(per_spec, 100):
                    break
            part.lengths = []
            report.merge(part)
            if part.rows == 0:
                raise DataError(f'--dataset {spec}: no rows (the data is empty)')
            if not got:
                unusable.append((spec, part))
            elif self.first_sample is None:
                self.first_sample = got[0]
        if unusable and (len(unusable) == len(self.specs) or (self.mix.interleaved and len(self.specs) > 1)):
            spec, part = unusable[0]
            first = f' First problem: {part.invalid[0]}' if part.invalid else ''
            why = ' (interleaved datasets stop when one has no more samples)' if len(unusable) < len(self.specs) \
                else ''
            raise DataError(f'--dataset: no usable training samples in the first {part.rows} rows of {spec}{why} '
                            f'({len(part.invalid)} invalid, {part.too_long} over --max_length '
                            f'{self.job.max_length}, {part.no_labels} without trained tokens).{first}')
        return report


def shuffle_buffer(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Yield ``items`` in a random order using a buffer of ``size``: each yielded item is a uniform pick among the
    buffered ones (memory: ``size`` items)."""
    buf = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = rng.randrange(size)
        yield buf[k]
        buf[k] = item
    rng.shuffle(buf)
    yield from buf


def pack_stream(samples: Iterator[dict], max_length: int, open_bins: int = 64) -> Iterator[dict]:
    """Greedy first-fit packing over a window of ``open_bins`` sequences; a full (or the oldest) one is emitted."""
    bins: list[list[dict]] = []
    rooms: list[int] = []
    for s in samples:
        n = len(s['input_ids'])
        for k, room in enumerate(rooms):
            if n <= room:
                bins[k].append(s)
                rooms[k] -= n
                if rooms[k] == 0:
                    yield pack_items(bins.pop(k))
                    rooms.pop(k)
                break
        else:
            bins.append([s])
            rooms.append(max_length - n)
            if len(bins) > open_bins:
                rooms.pop(0)
                yield pack_items(bins.pop(0))
    for b in bins:
        yield pack_items(b)
