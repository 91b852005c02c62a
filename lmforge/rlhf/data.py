"""RLHF rows -> token ids, through the model's chat template and lmforge's loss masks.

TRL could apply the chat template itself, but it would train a little more than lmforge does: TRL's completion is
everything the template renders after the prompt, including the newline ChatML puts after ``<|im_end|>``. Here the
ids are made by `encode_chat` (``loss_scale='last_round'``): the prompt is what the template renders before the
final answer, the completion is exactly the tokens `lmforge sft` would label for it (content + end-of-turn token(s),
nothing after). The TRL trainers get these pre-tokenized rows (`lmforge.rlhf.trainers` skips their own tokenizing).

Kinds of data: ``pair`` (dpo, orpo, simpo, cpo, rm) -> prompt_ids, chosen_ids, rejected_ids; ``kto`` ->
prompt_ids, completion_ids, label; ``prompt`` (grpo, ppo) -> prompt (messages), prompt_ids and the row's other
columns; ``sft`` (gkd) -> input_ids, labels, prompt_ids. Bad rows are skipped and reported as ``file:row: field:
problem`` (``--strict``: the first one stops the run); when none is usable, a `DataError` says why before any model is
loaded.

The data flags work as for `lmforge sft`: ``--custom_dataset_info`` registers names usable in ``--dataset``, several
datasets are concatenated or interleaved (``--interleave_prob``, `lmforge.data.mixing`), and ``--streaming`` encodes
rows while training (`RlhfStream`; the trainers that cannot take a stream are refused by `lmforge.args.rlhf`).

Each ``--dataset`` / ``--val_dataset`` spec is encoded once, in ``--dataset_num_proc`` processes, and its rows and
report are cached on disk (`encode_spec`, `lmforge.data.cache`: the key holds the data, tokenizer, chat template,
rlhf type, --max_length, --truncation_strategy, --system, --columns, the data seed and this module's source), before
mixing and splitting; a later run (or, under several processes, every rank after the main one) reads the entry.
``--streaming`` rows are never cached. ``--load_from_cache_file false`` re-encodes and refreshes the entry.
"""
from __future__ import annotations

import itertools
import os
import random

from lmforge.data.dataset import (DataReport, encode_rows, load_rows, register_custom_datasets, validation_data,
                                  with_validation)
from lmforge.data.formats import RowError, rename_columns
from lmforge.data.mixing import Mix, mix_of, mix_samples
from lmforge.data.streaming import StreamingDataset
from lmforge.data.preference import normalize_kto, normalize_pair, normalize_prompt
from lmforge.errors import DataError, TemplateError
from lmforge.templates import IGNORE_INDEX, encode_chat, render_prompt, with_system

KINDS = {'dpo': 'pair', 'orpo': 'pair', 'simpo': 'pair', 'cpo': 'pair', 'rm': 'pair', 'kto': 'kto',
         'grpo': 'prompt', 'ppo': 'prompt', 'gkd': 'sft'}
# the token-id columns of each kind's rows (cached as int32 arrays; the other columns are cached as JSON)
ID_COLUMNS = {'pair': ('prompt_ids', 'chosen_ids', 'rejected_ids'), 'kto': ('prompt_ids', 'completion_ids'),
              'prompt': ('prompt_ids',), 'sft': ('input_ids', 'labels', 'prompt_ids')}
CODE_FILES = ('rlhf/data.py',)  # this module's source is part of every cache key (besides lmforge.data.cache's)


def encode_answer(tokenizer, prompt: list[dict], answer: dict, tools=None, field: str = 'chosen'):
    """``(prompt_ids, answer_ids)``: the conversation ``prompt + [answer]`` as `encode_chat` encodes it, split where
    the answer's labels begin; the answer ends at its last labelled token (end-of-turn)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a split conversation: encode_chat returns the last turn, which is ours
        enc = encode_chat(tokenizer, prompt + [answer], tools=tools, loss_scale='last_round')
    trained = [i for i, label in enumerate(enc['labels']) if label != IGNORE_INDEX]
    if not trained:
        raise RowError(field, 'the chat template renders no token of this answer to train on')
    return enc['input_ids'][:trained[0]], enc['input_ids'][trained[0]:trained[-1] + 1]


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_pair(tokenizer, item: dict) -> dict:
    tools = item.get('tools')
    pc, chosen = encode_answer(tokenizer, item['prompt'], item['chosen'], tools, 'chosen')
    pr, rejected = encode_answer(tokenizer, item['prompt'], item['rejected'], tools, 'rejected')
    n = _common_prefix(pc, pr)  # equal unless a token merged across the prompt/answer boundary
    prompt, chosen, rejected = pc[:n], pc[n:] + chosen, pr[n:] + rejected
    if chosen == rejected:
        raise RowError('rejected', 'encodes to the same tokens as the chosen answer: the pair teaches nothing')
    return {'prompt_ids': prompt, 'chosen_ids': chosen, 'rejected_ids': rejected}


def encode_kto(tokenizer, item: dict) -> dict:
    prompt, completion = encode_answer(tokenizer, item['prompt'], item['completion'], item.get('tools'),
                                       'completion')
    return {'prompt_ids': prompt, 'completion_ids': completion, 'label': item['label']}


def encode_prompt(tokenizer, item: dict) -> dict:
    text = render_prompt(tokenizer, item['prompt'], tools=item.get('tools'))
    ids = tokenizer(text, add_special_tokens=False)['input_ids']
    return {'prompt': item['prompt'], 'prompt_ids': ids, **item['extra']}


def _fit(sample: dict, kind: str, max_length: int, strategy: str) -> dict | None:
    """Apply --max_length / --truncation_strategy; None = drop the sample."""
    if kind == 'prompt':
        ids = sample['prompt_ids']
        if len(ids) <= max_length:
            return sample
        return {**sample, 'prompt_ids': ids[-max_length:]} if strategy == 'left' else None
    answers = ('chosen_ids', 'rejected_ids') if kind == 'pair' else ('completion_ids',)
    longest = max(len(sample[a]) for a in answers)
    if len(sample['prompt_ids']) + longest <= max_length:
        return sample
    if strategy == 'left':  # keep the answers whole, cut the prompt's beginning
        keep = max_length - longest
        return {**sample, 'prompt_ids': sample['prompt_ids'][-keep:]} if keep > 0 else None
    if strategy == 'right':  # keep the prompt, cut the answers' ends
        room = max_length - len(sample['prompt_ids'])
        return {**sample, **{a: sample[a][:room] for a in answers}} if room > 0 else None
    return None


def _encode_row(row, tokenizer, kind: str, args) -> list[dict]:
    """The encoded samples of one valid row; raises `RowError`/`TemplateError` for an invalid one."""
    data = rename_columns(row.data, args.columns)
    if kind == 'pair':
        items = [normalize_pair(data, args.rlhf_type)]
    elif kind == 'kto':
        items = normalize_kto(data)
    else:
        items = [normalize_prompt(data)]
    encode = {'pair': encode_pair, 'kto': encode_kto, 'prompt': encode_prompt}[kind]
    for item in items:
        item['prompt'] = with_system(item['prompt'], args.system)
    return [encode(tokenizer, item) for item in items]


def collect_row(row, tokenizer, kind: str, args, report: DataReport, samples: list) -> None:
    """Encode one row into ``samples`` (truncated per --max_length / --truncation_strategy) and count it in
    ``report``; an invalid row is listed as 'file:row: field: problem', or raises `DataError` with --strict."""
    try:
        encoded = _encode_row(row, tokenizer, kind, args)
    except (RowError, TemplateError) as e:
        problem = f'{row.where}: {e.field}: {e.problem}' if isinstance(e, RowError) else f'{row.where}: messages: {e}'
        if getattr(args, 'strict', False):
            raise DataError(f'invalid row (--strict): {problem}') from None
        report.invalid.append(problem)
        return
    # grpo: TRL renders the prompt messages again, so a prompt that is too long can only be left out
    strategy = 'delete' if args.rlhf_type == 'grpo' else args.truncation_strategy
    fitted = [_fit(s, kind, args.max_length, strategy) for s in encoded]
    if any(f is not s for f, s in zip(fitted, encoded)):
        report.too_long += 1
    for s in fitted:
        if s is None:
            continue
        report.samples += 1
        answers = [k for k in ('chosen_ids', 'rejected_ids', 'completion_ids') if k in s]
        report.tokens += len(s['prompt_ids']) + sum(len(s[k]) for k in answers)
        report.trained_tokens += sum(len(s[k]) for k in answers)
        samples.append(s)


CHUNK = 256  # rows per task of the worker pool


def encode_rlhf_rows(rows, tokenizer, kind: str, args, num_proc: int = 1) -> tuple[list[dict], DataReport]:
    """`collect_row` of every row, in order; ``num_proc`` > 1 encodes 1000+ rows in that many processes (the same
    samples and report)."""
    report = DataReport(rows=len(rows))
    samples = []
    if num_proc <= 1 or len(rows) < 1000:
        for row in rows:
            collect_row(row, tokenizer, kind, args, report, samples)
        return samples, report
    import multiprocessing as mp

    chunks = [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)]
    with mp.get_context('fork').Pool(num_proc, initializer=_init_worker, initargs=(tokenizer, kind, args)) as pool:
        for got, part in pool.imap(_encode_in_worker, chunks):
            samples += got
            report.merge(part)
    return samples, report


_WORKER: tuple | None = None


def _init_worker(tokenizer, kind: str, args) -> None:
    global _WORKER
    _WORKER = tokenizer, kind, args


def _encode_in_worker(chunk: list) -> tuple[list[dict], DataReport]:
    tokenizer, kind, args = _WORKER
    report, samples = DataReport(), []
    for row in chunk:
        collect_row(row, tokenizer, kind, args, report, samples)  # --strict: the DataError reaches the parent
    return samples, report


def _with_prompt_ids(sample: dict) -> dict:
    """gkd: the prompt (for on-policy generation) is everything before the first trained token."""
    first = next(i for i, label in enumerate(sample['labels']) if label != IGNORE_INDEX)
    sample['prompt_ids'] = sample['input_ids'][:first]
    return sample


def _sft_with_prompts(rows, tokenizer, args, num_proc: int = 1) -> tuple[list[dict], DataReport]:
    """gkd: SFT encoding of the last answer, with its prompt ids."""
    samples, report = encode_rows(rows, tokenizer, 'sft', args.max_length, args.truncation_strategy,
                                  loss_scale='last_round', system=args.system, columns=args.columns,
                                  num_proc=num_proc, strict=getattr(args, 'strict', False))
    return [_with_prompt_ids(s) for s in samples], report


def _report_of(raw) -> DataReport | None:
    try:
        return DataReport(**raw)
    except TypeError:  # an entry of another lmforge version: encode again
        return None


def encode_spec(spec: str, tokenizer, kind: str, args, seed: int, log=print, flag: str = 'dataset'
                ) -> tuple[list[dict], DataReport]:
    """The encoded rows of one --dataset spec and their report, through the on-disk cache (`lmforge.data.cache`).
    Rows that the cache cannot hold exactly (GRPO/PPO reward columns that JSON would change) are encoded, used and
    not cached."""
    from lmforge.data import cache

    use_hf = getattr(args, 'use_hf', None)
    # everything that changes the rows; not --strict (it only decides whether a bad row stops the run)
    options = dict(rlhf_type=args.rlhf_type, max_length=args.max_length, truncation_strategy=args.truncation_strategy,
                   system=args.system, columns=args.columns, seed=seed)
    key = cache.cache_key(spec, tokenizer, options, use_hf, code_files=CODE_FILES)
    hit = cache.load_records(key) if key and getattr(args, 'load_from_cache_file', True) else None
    report = _report_of(hit[1]) if hit is not None else None
    if report is not None:
        samples = hit[0]
        log(f'{spec}: {len(samples)} encoded rows from the cache ({os.path.join(cache.cache_root(), key)})')
        if getattr(args, 'strict', False) and report.invalid:
            raise DataError(f'invalid row (--strict): {report.invalid[0]}')
        return samples, report
    rows = load_rows([spec], seed, use_hf, flag=flag)
    num_proc = getattr(args, 'dataset_num_proc', 1) or 1
    samples, report = _sft_with_prompts(rows, tokenizer, args, num_proc) if kind == 'sft' else \
        encode_rlhf_rows(rows, tokenizer, kind, args, num_proc)
    if key:
        cache.save_records(key, samples, report, ID_COLUMNS[kind])
    return samples, report


class RlhfStream(StreamingDataset):
    """``--streaming`` for rlhf: the rows of --dataset encoded for ``args.rlhf_type`` as the trainer asks for them
    (the rows, mixing, shuffle buffer and invalid-row handling of `StreamingDataset`). `hf_iterable` gives it to
    TRL's trainers."""

    def __init__(self, args, tokenizer, kind: str, seed: int, log=print):
        from lmforge.data.mixing import mix_of

        super().__init__(args.dataset, tokenizer, 'sft', max_length=args.max_length,
                         truncation_strategy=args.truncation_strategy, loss_scale='last_round', system=args.system,
                         columns=args.columns, strict=args.strict, seed=seed, shuffle=args.dataset_shuffle,
                         buffer_size=args.shuffle_buffer_size, use_hf=args.use_hf, mix=mix_of(args), log=log)
        self.args, self.kind = args, kind

    def encode(self, row, report: DataReport, got: list) -> None:
        if self.kind != 'sft':
            collect_row(row, self.job.tokenizer, self.kind, self.args, report, got)
            return
        new: list = []
        super().encode(row, report, new)
        got += [_with_prompt_ids(s) for s in new]

    def hf_iterable(self, transform=None, columns: list | None = None):
        """This stream as a `datasets.IterableDataset` (what TRL's trainers take), each sample passed through
        ``transform`` and cut to ``columns``; each pass over it reshuffles (the epoch is added to the seed)."""
        import datasets
        from datasets.info import DatasetInfo
        from datasets.iterable_dataset import ExamplesIterable, IterableDataset

        def shape(sample: dict) -> dict:
            sample = transform(sample) if transform else sample
            return {k: sample[k] for k in columns} if columns else sample

        passes = itertools.count()

        def generate():
            self.set_epoch(next(passes))
            for k, sample in enumerate(self):
                yield k, shape(sample)

        features = datasets.Dataset.from_list([shape(self.first_sample)]).features
        return IterableDataset(ExamplesIterable(generate, {}), info=DatasetInfo(features=features))


def build_rlhf_datasets(args, tokenizer, log=print) -> tuple:
    """Train and validation samples for ``args.rlhf_type``; raises `DataError` before any model is loaded when
    there is nothing usable. With --streaming the train set is an `RlhfStream`, checked on its first rows here."""
    kind = KINDS[args.rlhf_type]
    seed = args.data_seed if args.data_seed is not None else args.seed
    register_custom_datasets(args, log)

    def encode(specs, mix=None, flag='dataset'):
        parts, report = [], DataReport()
        for spec in specs:
            got, part = encode_spec(spec, tokenizer, kind, args, seed, log, flag)
            parts.append(got)
            report.merge(part)
        mix = mix or Mix()
        samples = mix_samples(parts, specs, mix, seed)
        if mix.interleaved and len(parts) > 1:
            log(f'mixing: {mix.describe(len(parts))}; {len(samples)} samples from '
                + ', '.join(f'{spec}: {len(p)}' for spec, p in zip(specs, parts)))
        return samples, report

    def encode_val(specs):
        return encode(specs, flag='val_dataset')

    if args.streaming:
        train = RlhfStream(args, tokenizer, kind, seed, log)
        report = train.check_start()
        for line in report.lines('train data (streaming, first rows)', args.max_length, args.truncation_strategy):
            log(line)
        log(f'streaming: rows are read, encoded and shuffled in a buffer of {train.buffer_size} while training '
            f'(--max_steps {args.max_steps})')
        return train, validation_data(encode_val, args, log) if args.val_dataset else []
    train, report = encode(args.dataset, mix_of(args))
    for line in report.lines('train data', args.max_length, args.truncation_strategy):
        log(line)
    if not train:
        first = f' First problem: {report.invalid[0]}' if report.invalid else ''
        raise DataError(f'--dataset: no usable {args.rlhf_type} rows in {", ".join(args.dataset)} '
                        f'({report.rows} rows: {len(report.invalid)} invalid, {report.too_long} over --max_length '
                        f'{args.max_length}).{first}')
    train, val = with_validation(train, encode_val, args, seed, log)
    if kind == 'kto':  # KTOTrainer reads rows in order (its KL term pairs neighbours): mix the labels here
        random.Random(seed).shuffle(train)
    return train, val
