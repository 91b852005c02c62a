"""``--streaming``: train on corpora that do not fit in memory.

Rows are read one at a time (`lmforge.data.readers.iter_dataset`: jsonl/txt line by line, csv/parquet/arrow in record
batches, hub datasets with ``streaming=True``), shuffled in a buffer of ``--shuffle_buffer_size`` rows, validated and
encoded as the trainer asks for them, and with ``--packing`` packed greedily into ``--max_length`` sequences. Memory
holds the shuffle buffer and a few packed sequences, never the dataset. A stream has no length, so the run needs
``--max_steps``; each pass over the data reshuffles with the epoch number added to the seed.

Invalid rows are skipped and counted (the first few are logged with file:row), or stop the run with ``--strict``.
Before the model loads, `check_start` encodes the first rows so that an unusable dataset fails early.
"""
from __future__ import annotations

import itertools
import random
from typing import Iterator

from lmforge.data.dataset import MAX_SHOWN, DataReport, EncodeJob, _collect, encode_one, pack_items
from lmforge.data.readers import iter_dataset
from lmforge.errors import DataError

try:
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - torch is a dependency
    _Base = object

CHECK_ROWS = 1000  # rows encoded before training to catch unusable data early


class StreamingDataset(_Base):
    def __init__(self, specs: list[str], tokenizer, mode: str, *, max_length: int, truncation_strategy: str,
                 loss_scale: str = 'default', system: str | None = None, columns: dict | None = None,
                 strict: bool = False, seed: int = 42, shuffle: bool = True, buffer_size: int = 1000,
                 packing: bool = False, use_hf: bool | None = None, log=print):
        self.specs = list(specs)
        self.job = EncodeJob(tokenizer, mode, max_length, truncation_strategy, loss_scale, system, columns, strict)
        self.seed, self.shuffle, self.buffer_size = seed, shuffle, max(1, int(buffer_size))
        self.packing, self.use_hf, self.log = packing, use_hf, log
        self.epoch = 0
        self.report = DataReport()
        self.skipped = 0  # invalid rows seen so far

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # ---- rows
    def rows(self) -> Iterator:
        streams = (iter_dataset(spec, use_hf=self.use_hf) for spec in self.specs)
        rows = itertools.chain.from_iterable(streams)
        try:  # several DataLoader workers: each takes every n-th row
            from torch.utils.data import get_worker_info
            info = get_worker_info()
        except ImportError:  # pragma: no cover
            info = None
        if info is not None and info.num_workers > 1:
            rows = itertools.islice(rows, info.id, None, info.num_workers)
        if self.shuffle:
            rows = shuffle_buffer(rows, self.buffer_size, random.Random(self.seed + self.epoch))
        return rows

    # ---- samples
    def samples(self, rows=None) -> Iterator[dict]:
        """Encoded samples of ``rows`` (default: the stream), invalid rows counted in ``self.report``."""
        for row in self.rows() if rows is None else rows:
            outcome = encode_one(row, self.job)
            got: list = []
            before = len(self.report.invalid)
            self.report.rows += 1
            _collect(outcome, self.report, got, self.job.strict)
            if len(self.report.invalid) > before:
                self.skipped += 1
                if self.skipped <= MAX_SHOWN:
                    self.log(f'streaming: invalid row skipped ({self.skipped} so far): {self.report.invalid[-1]}')
                del self.report.invalid[MAX_SHOWN:]  # memory stays bounded: the first ones are kept, and the count
            self.report.lengths.clear()
            yield from got

    def __iter__(self) -> Iterator[dict]:
        samples = self.samples()
        if not self.packing:
            yield from samples
            return
        yield from pack_stream(samples, self.job.max_length, self.buffer_size)

    def check_start(self, n: int = CHECK_ROWS) -> DataReport:
        """Encode the first ``n`` rows (no shuffling): a stream whose start holds no usable sample fails here,
        before any model is loaded."""
        report, got = DataReport(), []
        rows = itertools.chain.from_iterable(iter_dataset(spec, use_hf=self.use_hf) for spec in self.specs)
        for row in itertools.islice(rows, n):
            report.rows += 1
            _collect(encode_one(row, self.job), report, got, self.job.strict)
            if got and report.rows >= min(n, 100):
                break
        report.lengths = []
        if report.rows == 0:
            raise DataError(f'--dataset {", ".join(self.specs)}: no rows (the data is empty)')
        if not got:
            first = f' First problem: {report.invalid[0]}' if report.invalid else ''
            raise DataError(f'--dataset: no usable training samples in the first {report.rows} rows of '
                            f'{", ".join(self.specs)} ({len(report.invalid)} invalid, {report.too_long} over '
                            f'--max_length {self.job.max_length}, {report.no_labels} without trained tokens).'
                            f'{first}')
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
