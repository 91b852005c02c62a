"""RLHF rows -> token ids, through the model's chat template and lmforge's loss masks.

TRL could apply the chat template itself, but it would train a little more than lmforge does: TRL's completion is
everything the template renders after the prompt, including the newline ChatML puts after ``<|im_end|>``. Here the
ids are made by `encode_chat` (``loss_scale='last_round'``): the prompt is what the template renders before the
final answer, the completion is exactly the tokens `lmforge sft` would label for it (content + end-of-turn token(s),
nothing after). The TRL trainers get these pre-tokenized rows (`lmforge.rlhf.trainers` skips their own tokenizing).

Kinds of data: ``pair`` (dpo, orpo, simpo, cpo, rm) -> prompt_ids, chosen_ids, rejected_ids; ``kto`` ->
prompt_ids, completion_ids, label; ``prompt`` (grpo, ppo) -> prompt (messages), prompt_ids and the row's other
columns; ``sft`` (gkd) -> input_ids, labels, prompt_ids. Bad rows are skipped and reported as ``file:row: field:
problem``; when none is usable, a `DataError` says why before any model is loaded.
"""
from __future__ import annotations

import random

from lmforge.data.dataset import DataReport, encode_rows, load_rows, with_validation
from lmforge.data.formats import RowError, rename_columns
from lmforge.data.preference import normalize_kto, normalize_pair, normalize_prompt
from lmforge.errors import DataError, TemplateError
from lmforge.templates import IGNORE_INDEX, encode_chat, render_prompt, with_system

KINDS = {'dpo': 'pair', 'orpo': 'pair', 'simpo': 'pair', 'cpo': 'pair', 'rm': 'pair', 'kto': 'kto',
         'grpo': 'prompt', 'ppo': 'prompt', 'gkd': 'sft'}


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


def encode_rlhf_rows(rows, tokenizer, kind: str, args) -> tuple[list[dict], DataReport]:
    report = DataReport(rows=len(rows))
    samples = []
    for row in rows:
        try:
            data = rename_columns(row.data, args.columns)
            if kind == 'pair':
                items = [normalize_pair(data, args.rlhf_type)]
            elif kind == 'kto':
                items = normalize_kto(data)
            else:
                items = [normalize_prompt(data)]
            encoded = []
            for item in items:
                item['prompt'] = with_system(item['prompt'], args.system)
                encoded.append({'pair': encode_pair, 'kto': encode_kto, 'prompt': encode_prompt}[kind](tokenizer,
                                                                                                       item))
        except RowError as e:
            report.invalid.append(f'{row.where}: {e.field}: {e.problem}')
            continue
        except TemplateError as e:
            report.invalid.append(f'{row.where}: messages: {e}')
            continue
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
    return samples, report


def _sft_with_prompts(rows, tokenizer, args) -> tuple[list[dict], DataReport]:
    """gkd: SFT encoding of the last answer; the prompt (for on-policy generation) is everything before it."""
    samples, report = encode_rows(rows, tokenizer, 'sft', args.max_length, args.truncation_strategy,
                                  loss_scale='last_round', system=args.system, columns=args.columns)
    for s in samples:
        first = next(i for i, label in enumerate(s['labels']) if label != IGNORE_INDEX)
        s['prompt_ids'] = s['input_ids'][:first]
    return samples, report


def build_rlhf_datasets(args, tokenizer, log=print) -> tuple[list[dict], list[dict]]:
    """Train and validation samples for ``args.rlhf_type``; raises `DataError` before any model is loaded when
    there is nothing usable."""
    kind = KINDS[args.rlhf_type]
    seed = args.data_seed if args.data_seed is not None else args.seed

    def encode(specs):
        rows = load_rows(specs, seed)
        if kind == 'sft':
            return _sft_with_prompts(rows, tokenizer, args)
        return encode_rlhf_rows(rows, tokenizer, kind, args)

    train, report = encode(args.dataset)
    for line in report.lines('train data', args.max_length, args.truncation_strategy):
        log(line)
    if not train:
        first = f' First problem: {report.invalid[0]}' if report.invalid else ''
        raise DataError(f'--dataset: no usable {args.rlhf_type} rows in {", ".join(args.dataset)} '
                        f'({report.rows} rows: {len(report.invalid)} invalid, {report.too_long} over --max_length '
                        f'{args.max_length}).{first}')
    train, val = with_validation(train, encode, args, seed, log)
    if kind == 'kto':  # KTOTrainer reads rows in order (its KL term pairs neighbours): mix the labels here
        random.Random(seed).shuffle(train)
    return train, val
