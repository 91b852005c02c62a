"""From --dataset specs to tokenized training samples: read, validate, normalise, encode, truncate, cache, split,
pack.

Encoding goes through the template engine (`lmforge.templates.render_samples`: masks from the model's own chat
template), in ``--dataset_num_proc`` processes, with a progress bar, and is cached on disk per dataset spec
(`lmforge.data.cache`). Every invalid row is collected as ``file:row: field: problem``; training skips them (a count
and the first few are logged) or, with ``--strict``, stops at the first one.
"""
from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import itertools
import os
import random
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from lmforge.data.formats import RowError, detect_format, normalize, rename_columns
from lmforge.data.readers import Row, iter_rows, read_dataset
from lmforge.data.store import TokenStore
from lmforge.errors import DataError, TemplateError
from lmforge.templates import IGNORE_INDEX, with_system
from lmforge.templates.encode import batch_encoder, render_samples, tokenize_spans_batch

MAX_SHOWN = 5
CHUNK = 256  # rows per task of the worker pool (and per progress-bar update)


@dataclass
class DataReport:
    rows: int = 0
    invalid: list = field(default_factory=list)       # 'file:row: field: problem'
    too_long: int = 0                                 # rows over max_length (deleted or truncated)
    no_labels: int = 0                                # samples left with no trained token
    split_conversations: int = 0                      # conversations encoded one sequence per turn
    samples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    formats: dict = field(default_factory=dict)       # detected format -> rows
    lengths: list = field(default_factory=list)       # tokens of every encoded sample, before truncation

    def merge(self, other: 'DataReport') -> 'DataReport':
        for name in ('rows', 'too_long', 'no_labels', 'split_conversations', 'samples', 'tokens', 'trained_tokens'):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.invalid += other.invalid
        self.lengths += other.lengths
        self.formats = dict(Counter(self.formats) + Counter(other.formats))
        return self

    def lines(self, name: str, max_length: int, strategy: str) -> list[str]:
        out = [f'{name}: {self.rows} rows -> {self.samples} samples, {self.tokens} tokens '
               f'({self.trained_tokens} trained)']
        if self.invalid:
            out.append(f'  {len(self.invalid)} invalid rows skipped, e.g.:')
            out += [f'    {e}' for e in self.invalid[:MAX_SHOWN]]
            if len(self.invalid) > MAX_SHOWN:
                out.append('    ... (`lmforge data check` lists every one; --strict stops at the first)')
        if self.too_long:
            verb = 'deleted' if strategy == 'delete' else f'truncated on the {strategy}'
            out.append(f'  {self.too_long} rows longer than --max_length {max_length}: {verb} '
                       '(--truncation_strategy)')
        if self.no_labels:
            out.append(f'  {self.no_labels} samples had no trained tokens left and were dropped')
        if self.split_conversations:
            out.append(f'  {self.split_conversations} conversations: the chat template renders history differently '
                       'from the final turn, so each trained turn became its own sequence, as inference renders it')
        return out


def load_rows(specs: list[str], seed: int, use_hf: bool | None = None, flag: str = 'dataset') -> list[Row]:
    """Every row of ``specs``; ``flag`` (dataset, val_dataset) is the flag named in errors."""
    rows = []
    for spec in specs:
        got = read_dataset(spec, seed=seed, use_hf=use_hf, flag=flag)
        if not got:
            raise DataError(f'--{flag} {spec}: no rows (the file is empty)')
        rows += got
    return rows


# --------------------------------------------------------------------------- encoding

@dataclass
class EncodeJob:
    tokenizer: object
    mode: str
    max_length: int
    truncation_strategy: str
    loss_scale: str = 'default'
    system: str | None = None
    columns: dict | None = None
    strict: bool = False


def encode_rows(rows: Iterable[Row], tokenizer, mode: str, max_length: int, truncation_strategy: str,
                loss_scale: str = 'default', system: str | None = None, columns: dict | None = None,
                num_proc: int = 1, strict: bool = False, progress: bool | None = None,
                desc: str = 'encoding', compact: bool = False) -> tuple[list[dict] | TokenStore, DataReport]:
    """Encode every valid row (a list, or any iterable: rows are pulled as they are encoded); collect every invalid
    one as 'file:row: field: problem' (``strict``: raise `DataError` at the first). ``progress``: show a progress
    bar (None: on a terminal, for 1000+ rows). ``compact``: return the samples as a `TokenStore` (flat int32 arrays)
    instead of a list of dicts of lists."""
    job = EncodeJob(tokenizer, mode, max_length, truncation_strategy, loss_scale, system, columns, strict)
    total = len(rows) if hasattr(rows, '__len__') else None
    report = DataReport()
    samples = TokenStore() if compact else []
    bar = _progress(total, desc, progress)
    try:
        with _gc_paused():
            for results in _encode_chunks(rows, job, num_proc, total):
                report.rows += len(results)
                for outcome in results:
                    _collect(outcome, report, samples, strict)
                if bar is not None:
                    bar.update(len(results))
    finally:
        if bar is not None:
            bar.close()
    return samples, report


@contextlib.contextmanager
def _gc_paused():
    """Encoding creates millions of short-lived lists and no reference cycles: the cyclic garbage collector would
    only walk the rows held in memory again and again (about a tenth of the encoding time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _progress(total: int | None, desc: str, progress: bool | None):
    if progress is False or (progress is None and total is not None and total < 1000):
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit='rows', disable=None if progress is None else False,
                mininterval=1.0, dynamic_ncols=True)


def _encode_chunks(rows, job: EncodeJob, num_proc: int, total: int | None):
    it = iter(rows)
    chunks = iter(lambda: list(itertools.islice(it, CHUNK)), [])
    if num_proc > 1 and (total is None or total >= 1000):
        import multiprocessing as mp
        with mp.get_context('fork').Pool(num_proc, initializer=_init_worker, initargs=(job,)) as pool:
            yield from pool.imap(_encode_in_worker, chunks)
    else:
        yield from _pipelined(chunks, job)


def _pipelined(chunks, job: EncodeJob):
    """`encode_chunk` of each chunk, the Rust tokenizer encoding one chunk in a second thread (it releases the GIL)
    while this one validates and renders the next: the two halves of the work overlap. The same results, in order."""
    encode = batch_encoder(job.tokenizer)
    if encode is None:
        for chunk in chunks:
            yield encode_chunk(chunk, job)
        return
    from concurrent.futures import ThreadPoolExecutor

    def finish(prepared, items, future):
        encodings = future.result() if future is not None else []
        return _finish_chunk(prepared, tokenize_spans_batch(job.tokenizer, items, encodings), job)

    with ThreadPoolExecutor(1, thread_name_prefix='lmforge-tokenize') as pool:
        pending = None
        for chunk in chunks:
            prepared, items = _prepare_chunk(chunk, job)
            future = pool.submit(encode, [text for text, _ in items]) if items else None
            if pending is not None:
                yield finish(*pending)
            pending = prepared, items, future
        if pending is not None:
            yield finish(*pending)


_JOB: EncodeJob | None = None


def _init_worker(job: EncodeJob) -> None:
    global _JOB
    _JOB = job
    gc.disable()  # see _gc_paused; the worker exits with the pool


def _encode_in_worker(chunk: list[Row]) -> list:
    return encode_chunk(chunk, _JOB)


def encode_one(row: Row, job: EncodeJob) -> tuple:
    """``('invalid', 'file:row: field: problem', format)`` or ``('ok', {samples, too_long, split, lengths},
    format)`` for one row."""
    return encode_chunk([row], job)[0]


def encode_chunk(rows: list[Row], job: EncodeJob) -> list[tuple]:
    """`encode_one` of every row, the texts of all of them tokenized in one batch."""
    prepared, items = _prepare_chunk(rows, job)
    return _finish_chunk(prepared, tokenize_spans_batch(job.tokenizer, items) if items else [], job)


def _prepare_chunk(rows: list[Row], job: EncodeJob) -> tuple[list, list]:
    """Every row validated and rendered: (`_prepare` of each, the ``(text, spans)`` to tokenize)."""
    prepared = [_prepare(row, job) for row in rows]
    return prepared, [item for p in prepared if p[0] == 'texts' for item in p[1]]


def _finish_chunk(prepared: list, samples: list, job: EncodeJob) -> list[tuple]:
    """The outcome of each row, given the tokenized ``samples`` of its texts (in order)."""
    samples = iter(samples)
    out = []
    for p in prepared:
        if p[0] != 'texts':
            out.append(p[1])
            continue
        _, texts, split, kind, row = p
        encoded = [next(samples).as_dict() for _ in texts]
        out.append(_fit(encoded, split, kind, job))
    return out


def _prepare(row: Row, job: EncodeJob) -> tuple:
    """``('done', outcome)`` (invalid, or pt text already tokenized) or ``('texts', [(text, spans)], split, format,
    row)`` to tokenize."""
    data = rename_columns(row.data, job.columns)
    kind = 'invalid' if '__error__' in data else ('text' if job.mode == 'pt' else detect_format(data))
    try:
        item = normalize(data, job.mode, base_dir=_folder_of(row.source))
        if job.mode == 'pt':
            tok = job.tokenizer
            ids = tok(item['text'], add_special_tokens=True)['input_ids']
            if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
                ids = ids + [tok.eos_token_id]
            return 'done', _fit([{'input_ids': ids, 'labels': list(ids)}], False, kind, job)
        if any(item.get(m) for m in ('images', 'videos', 'audios')):
            media = next(m for m in ('images', 'videos', 'audios') if item.get(m))
            raise RowError(media, 'lmforge sft trains text-only chat models in this version; rows with '
                                  f'{media} need a multimodal model and template')
        texts, split = render_samples(job.tokenizer, with_system(item['messages'], job.system),
                                      tools=item.get('tools'), loss_scale=job.loss_scale)
    except RowError as e:
        return 'done', ('invalid', f'{row.where}: {e.field}: {e.problem}', kind)
    except TemplateError as e:
        return 'done', ('invalid', f'{row.where}: messages: {e}', kind)
    return 'texts', texts, split, kind, row


def _fit(encoded: list[dict], split: bool, kind: str, job: EncodeJob) -> tuple:
    """Apply --max_length / --truncation_strategy to a row's samples."""
    kept, too_long, lengths = [], 0, []
    for s in encoded:
        lengths.append(len(s['input_ids']))
        if len(s['input_ids']) > job.max_length:
            too_long = 1
            if job.truncation_strategy == 'delete':
                continue
            cut = slice(-job.max_length, None) if job.truncation_strategy == 'left' else slice(0, job.max_length)
            s = {'input_ids': s['input_ids'][cut], 'labels': s['labels'][cut]}
        kept.append(s)
    return 'ok', {'samples': kept, 'too_long': too_long, 'split': int(split), 'lengths': lengths}, kind


@functools.lru_cache(maxsize=256)
def _folder_of(source: str) -> str | None:
    """Where relative media paths of a data file's rows are looked up (None for hub rows)."""
    return os.path.dirname(source) if os.path.isfile(source) else None


def _collect(outcome: tuple, report: DataReport, samples: list, strict: bool) -> None:
    status, payload, kind = outcome
    report.formats[kind] = report.formats.get(kind, 0) + 1
    if status == 'invalid':
        if strict:
            raise DataError(f'invalid row (--strict): {payload}')
        report.invalid.append(payload)
        return
    report.too_long += payload['too_long']
    report.split_conversations += payload['split']
    report.lengths += payload['lengths']
    for s in payload['samples']:
        trained = len(s['labels']) - s['labels'].count(IGNORE_INDEX)
        if trained == 0:
            report.no_labels += 1
            continue
        report.samples += 1
        report.tokens += len(s['input_ids'])
        report.trained_tokens += trained
        samples.append(s)


# --------------------------------------------------------------------------- cached encoding of --dataset specs

def encode_specs(specs: list[str], tokenizer, mode: str, *, max_length: int, truncation_strategy: str,
                 loss_scale: str = 'default', system: str | None = None, columns: dict | None = None,
                 num_proc: int = 1, strict: bool = False, seed: int = 42, use_hf: bool | None = None,
                 load_from_cache_file: bool = True, log=print, desc: str = 'train data', mix=None,
                 flag: str = 'dataset') -> tuple[list[dict], DataReport]:
    """Encode each spec, through the on-disk cache; one merged report. The specs' samples are concatenated, or
    mixed as ``mix`` says (`lmforge.data.mixing.Mix`: interleaved, seeded by ``seed``). ``flag`` (dataset,
    val_dataset) is the flag named in errors."""
    from lmforge.data import cache
    from lmforge.data.mixing import Mix, mix_samples

    options = dict(mode=mode, max_length=max_length, truncation_strategy=truncation_strategy,
                   loss_scale=loss_scale, system=system, columns=columns, seed=seed)
    parts, report = [], DataReport()
    for spec in specs:
        key = cache.cache_key(spec, tokenizer, options, use_hf)
        hit = cache.load(key) if key and load_from_cache_file else None
        if hit is not None:
            got, raw = hit
            part = DataReport(**raw)
            log(f'{spec}: {len(got)} encoded samples from the cache ({os.path.join(cache.cache_root(), key)})')
            if strict and part.invalid:
                raise DataError(f'invalid row (--strict): {part.invalid[0]}')
        else:
            rows = iter_rows(spec, seed=seed, use_hf=use_hf, flag=flag)  # files are read as they are encoded
            got, part = encode_rows(rows, tokenizer, mode, max_length, truncation_strategy, loss_scale, system,
                                    columns, num_proc, strict, desc=f'{desc}: {spec}', compact=True)
            if not part.rows:
                raise DataError(f'--{flag} {spec}: no rows (the file is empty)')
            if key:
                cache.save(key, got, part)
        parts.append(got)
        report.merge(part)
    mix = mix or Mix()
    samples = mix_samples(parts, specs, mix, seed)
    if mix.interleaved and len(parts) > 1:
        counts = ', '.join(f'{spec}: {len(p)}' for spec, p in zip(specs, parts))
        log(f'mixing: {mix.describe(len(parts))}; {len(samples)} samples from {counts}')
    return samples, report


# --------------------------------------------------------------------------- split and pack

def split_train_val(samples, ratio: float, seed: int) -> tuple:
    """Hold out ``ratio`` of the samples (a list or a `TokenStore`) for validation: the same samples for the same
    seed, every run."""
    if ratio <= 0 or len(samples) < 2:
        return samples, [] if isinstance(samples, list) else TokenStore()
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(samples) - 1, max(1, int(round(len(samples) * ratio))))
    val = set(order[:n_val])
    keep = [i for i in range(len(samples)) if i not in val]
    if isinstance(samples, TokenStore):
        return samples.select(keep), samples.select(sorted(val))
    return [samples[i] for i in keep], [samples[i] for i in sorted(val)]


def pack(samples, max_length: int, seed: int):
    """Bin samples (a list or a `TokenStore`) into sequences of at most ``max_length`` tokens (best-fit decreasing,
    bins shuffled). Each packed item keeps per-sample ``position_ids`` (restarting at 0) so attention never crosses
    samples, and the first token of each sample is no target."""
    store = isinstance(samples, TokenStore)
    sizes = [samples.length(i) for i in range(len(samples))] if store else \
        [len(s['input_ids']) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: -sizes[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin) sorted: the best fit is the first with enough room
    for i in order:
        n = sizes[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_length - n, len(bins) - 1))
    random.Random(seed).shuffle(bins)
    if store:
        out = TokenStore(position_ids=array('i'))
        for b in bins:
            out.append(pack_items([samples[i] for i in b]))
        return out
    return [pack_items([samples[i] for i in b]) for b in bins]


def pack_items(items: list[dict]) -> dict:
    ids, labels, pos = [], [], []
    for s in items:
        ids += s['input_ids']
        labels += [IGNORE_INDEX] + list(s['labels'][1:])  # the first token of a sample is never a target
        pos += list(range(len(s['input_ids'])))
    return {'input_ids': ids, 'labels': labels, 'position_ids': pos}


# --------------------------------------------------------------------------- build_datasets

def with_validation(train, encode_val, args, seed: int, log=print) -> tuple:
    """(train, validation): --val_dataset encoded by ``encode_val(specs) -> (samples, report)``, else
    --split_dataset_ratio of the training samples, held out deterministically by ``seed``. A --val_dataset with no
    usable sample is a `DataError`, as the training data's."""
    if args.val_dataset:
        return train, validation_data(encode_val, args, log)
    train, val = split_train_val(train, args.split_dataset_ratio, seed)
    if val:
        log(f'validation: {len(val)} samples held out of --dataset (--split_dataset_ratio '
            f'{args.split_dataset_ratio}, seed {seed})')
    return train, val


def validation_data(encode_val, args, log=print):
    """The samples of --val_dataset, encoded by ``encode_val(specs) -> (samples, report)`` and logged; raises
    `DataError` when none is usable (every row invalid, too long or without trained tokens)."""
    val, report = encode_val(args.val_dataset)
    for line in report.lines('validation data', args.max_length, args.truncation_strategy):
        log(line)
    if not len(val):
        first = f' First problem: {report.invalid[0]}' if report.invalid else ''
        raise DataError(f'--val_dataset: no usable validation samples in {", ".join(args.val_dataset)} '
                        f'({report.rows} rows: {len(report.invalid)} invalid, {report.too_long} over --max_length '
                        f'{args.max_length}, {report.no_labels} without trained tokens); fix them or drop '
                        f'--val_dataset.{first}')
    return val


def register_custom_datasets(args, log=print) -> None:
    """--custom_dataset_info: register the named datasets of each file (before any --dataset is resolved)."""
    from lmforge.data.registry import load_custom_dataset_info

    for path in getattr(args, 'custom_dataset_info', None) or []:
        added = load_custom_dataset_info(path)
        log(f'--custom_dataset_info {path}: {len(added)} datasets registered ({", ".join(e.name for e in added)})')


def build_datasets(args, tokenizer, mode: str, log=print) -> tuple:
    """Train and validation samples for ``args`` (SftArgs/PtArgs); raises before any model is loaded when the
    data is unusable. With ``--streaming`` the train set is a `StreamingDataset` (an iterable), checked on its first
    rows here."""
    from lmforge.data.mixing import mix_of

    register_custom_datasets(args, log)
    seed = args.data_seed if args.data_seed is not None else args.seed
    opts = dict(max_length=args.max_length, truncation_strategy=args.truncation_strategy,
                loss_scale=getattr(args, 'loss_scale', 'default'), system=args.system, columns=args.columns,
                num_proc=args.dataset_num_proc, strict=getattr(args, 'strict', False), seed=seed,
                use_hf=getattr(args, 'use_hf', None),
                load_from_cache_file=getattr(args, 'load_from_cache_file', True))

    def encode_val(specs):
        return encode_specs(specs, tokenizer, mode, log=log, desc='validation data', flag='val_dataset', **opts)

    if getattr(args, 'streaming', False):
        return _build_streaming(args, tokenizer, mode, seed, opts, encode_val, log)
    train, report = encode_specs(args.dataset, tokenizer, mode, log=log, mix=mix_of(args), **opts)
    for line in report.lines('train data', args.max_length, args.truncation_strategy):
        log(line)
    if not train:
        raise _no_samples(args, report)
    train, val = with_validation(train, encode_val, args, seed, log)
    if args.packing:
        n = len(train)
        train = pack(train, args.max_length, seed)
        log(f'packing: {n} samples -> {len(train)} sequences of <= {args.max_length} tokens')
    return train, val


def _no_samples(args, report: DataReport) -> DataError:
    first = f' First problem: {report.invalid[0]}' if report.invalid else ''
    return DataError(f'--dataset: no usable training samples in {", ".join(args.dataset)} '
                     f'({report.rows} rows: {len(report.invalid)} invalid, {report.too_long} over --max_length '
                     f'{args.max_length}, {report.no_labels} without trained tokens).{first}')


def _build_streaming(args, tokenizer, mode, seed, opts, encode_val, log):
    from lmforge.data.mixing import mix_of
    from lmforge.data.streaming import StreamingDataset

    train = StreamingDataset(args.dataset, tokenizer, mode, max_length=args.max_length,
                             truncation_strategy=args.truncation_strategy, loss_scale=opts['loss_scale'],
                             system=args.system, columns=args.columns, strict=opts['strict'], seed=seed,
                             shuffle=getattr(args, 'dataset_shuffle', True),
                             buffer_size=getattr(args, 'shuffle_buffer_size', 1000),
                             packing=args.packing, use_hf=opts['use_hf'], mix=mix_of(args), log=log)
    report = train.check_start()
    for line in report.lines('train data (streaming, first rows)', args.max_length, args.truncation_strategy):
        log(line)
    log(f'streaming: rows are read, encoded and shuffled in a buffer of {train.buffer_size} while training '
        f'(--max_steps {args.max_steps})' + ('; packed on the fly' if args.packing else '') +
        (f'; {train.mix.describe(len(args.dataset))}' if train.mix.interleaved and len(args.dataset) > 1 else ''))
    return train, validation_data(encode_val, args, log) if args.val_dataset else []
