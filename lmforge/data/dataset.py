"""From --dataset specs to tokenized training samples: read, validate, normalise, encode, truncate, split, pack."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from lmforge.data.formats import RowError, normalize, rename_columns
from lmforge.data.readers import Row, read_dataset
from lmforge.errors import DataError
from lmforge.templates import IGNORE_INDEX, encode_chat_samples, with_system
from lmforge.errors import TemplateError

MAX_SHOWN = 5


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

    def lines(self, name: str, max_length: int, strategy: str) -> list[str]:
        out = [f'{name}: {self.rows} rows -> {self.samples} samples, {self.tokens} tokens '
               f'({self.trained_tokens} trained)']
        if self.invalid:
            out.append(f'  {len(self.invalid)} invalid rows skipped, e.g.:')
            out += [f'    {e}' for e in self.invalid[:MAX_SHOWN]]
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


def load_rows(specs: list[str], seed: int) -> list[Row]:
    rows = []
    for spec in specs:
        got = read_dataset(spec, seed=seed)
        if not got:
            raise DataError(f'--dataset {spec}: no rows (the file is empty)')
        rows += got
    return rows


def encode_rows(rows: list[Row], tokenizer, mode: str, max_length: int, truncation_strategy: str,
                loss_scale: str = 'default', system: str | None = None, columns: dict | None = None,
                num_proc: int = 1) -> tuple[list[dict], DataReport]:
    """Encode every valid row; collect every invalid one as 'file:row: field: problem'."""
    report = DataReport(rows=len(rows))
    job = (tokenizer, mode, max_length, truncation_strategy, loss_scale, system, columns)
    if num_proc > 1 and len(rows) >= 1000:
        import multiprocessing as mp
        chunks = [rows[i::num_proc] for i in range(num_proc)]
        with mp.get_context('fork').Pool(num_proc) as pool:
            parts = pool.starmap(_encode_chunk, [(chunk, job) for chunk in chunks])
        results = [r for part in parts for r in part]
        results.sort(key=lambda r: r[0])
    else:
        results = _encode_chunk(rows, job)
    samples = []
    for _, outcome, payload in results:
        if outcome == 'invalid':
            report.invalid.append(payload)
            continue
        report.too_long += payload['too_long']
        report.split_conversations += payload['split']
        for s in payload['samples']:
            trained = sum(1 for x in s['labels'] if x != IGNORE_INDEX)
            if trained == 0:
                report.no_labels += 1
                continue
            report.samples += 1
            report.tokens += len(s['input_ids'])
            report.trained_tokens += trained
            samples.append(s)
    return samples, report


def _encode_chunk(rows: list[Row], job) -> list[tuple]:
    tokenizer, mode, max_length, strategy, loss_scale, system, columns = job
    out = []
    order = {id(r): k for k, r in enumerate(rows)}
    for row in rows:
        key = (row.source, row.index, order[id(row)])
        try:
            item = normalize(rename_columns(row.data, columns), mode)
            if mode == 'pt':
                ids = tokenizer(item['text'], add_special_tokens=True)['input_ids']
                if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
                    ids = ids + [tokenizer.eos_token_id]
                encoded, split = [{'input_ids': ids, 'labels': list(ids)}], False
            else:
                found, split = encode_chat_samples(tokenizer, with_system(item['messages'], system),
                                                   tools=item.get('tools'), loss_scale=loss_scale)
                encoded = [s.as_dict() for s in found]
        except RowError as e:
            out.append((key, 'invalid', f'{row.where}: {e.field}: {e.problem}'))
            continue
        except TemplateError as e:
            out.append((key, 'invalid', f'{row.where}: messages: {e}'))
            continue
        kept, too_long = [], 0
        for s in encoded:
            if len(s['input_ids']) > max_length:
                too_long = 1
                if strategy == 'delete':
                    continue
                cut = slice(-max_length, None) if strategy == 'left' else slice(0, max_length)
                s = {'input_ids': s['input_ids'][cut], 'labels': s['labels'][cut]}
            kept.append(s)
        out.append((key, 'ok', {'samples': kept, 'too_long': too_long, 'split': int(split)}))
    return out


def split_train_val(samples: list, ratio: float, seed: int) -> tuple[list, list]:
    if ratio <= 0 or len(samples) < 2:
        return samples, []
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(samples) * ratio)))
    val = set(order[:n_val])
    return [s for i, s in enumerate(samples) if i not in val], [samples[i] for i in sorted(val)]


def pack(samples: list[dict], max_length: int, seed: int) -> list[dict]:
    """Bin samples into sequences of at most ``max_length`` tokens (first-fit decreasing, shuffled order).
    Each packed item keeps per-sample ``position_ids`` so attention never crosses samples."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]['input_ids']))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(samples[i]['input_ids'])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_length - n)
    random.Random(seed).shuffle(bins)
    packed = []
    for b in bins:
        ids, labels, pos = [], [], []
        for i in b:
            s = samples[i]
            ids += s['input_ids']
            labels += [IGNORE_INDEX] + s['labels'][1:]  # the first token of a sample is never a target
            pos += list(range(len(s['input_ids'])))
        packed.append({'input_ids': ids, 'labels': labels, 'position_ids': pos})
    return packed


def build_datasets(args, tokenizer, mode: str, log=print) -> tuple[list, list]:
    """Train and validation samples for ``args`` (SftArgs/PtArgs); raises before any model is loaded when the
    data is unusable."""
    seed = args.data_seed if args.data_seed is not None else args.seed
    opts = dict(mode=mode, max_length=args.max_length, truncation_strategy=args.truncation_strategy,
                loss_scale=getattr(args, 'loss_scale', 'default'), system=args.system, columns=args.columns,
                num_proc=args.dataset_num_proc)
    train, report = encode_rows(load_rows(args.dataset, seed), tokenizer, **opts)
    for line in report.lines('train data', args.max_length, args.truncation_strategy):
        log(line)
    if not train:
        first = f' First problem: {report.invalid[0]}' if report.invalid else ''
        raise DataError(f'--dataset: no usable training samples in {", ".join(args.dataset)} '
                        f'({report.rows} rows: {len(report.invalid)} invalid, {report.too_long} over --max_length '
                        f'{args.max_length}, {report.no_labels} without trained tokens).{first}')
    if args.val_dataset:
        val, vreport = encode_rows(load_rows(args.val_dataset, seed), tokenizer, **opts)
        for line in vreport.lines('validation data', args.max_length, args.truncation_strategy):
            log(line)
    else:
        train, val = split_train_val(train, args.split_dataset_ratio, seed)
        if val:
            log(f'validation: {len(val)} samples held out of --dataset (--split_dataset_ratio '
                f'{args.split_dataset_ratio})')
    if args.packing:
        n = len(train)
        train = pack(train, args.max_length, seed)
        log(f'packing: {n} samples -> {len(train)} sequences of <= {args.max_length} tokens')
    return train, val
