"""`lmforge template show|list`: what a model's chat template makes of a conversation, with the trained tokens marked.

    lmforge template show --model DIR [--dataset FILE.jsonl [--row N]] [--template NAME|FILE.jinja] [--system S]
    lmforge template list

``show`` prints where the template comes from (and the named fix applied, if any), the end-of-turn and stop tokens,
whether the template is prefix-consistent on the example (one sequence) or each trained turn is its own sequence,
and every sequence with its trained tokens in colour (a terminal) or between ``[[`` and ``]]`` (otherwise).
"""
from __future__ import annotations

import argparse
import sys

from lmforge.errors import ArgumentError, DataError, LmforgeError

LOSS_SCALES = ('default', 'all', 'last_round', 'ignore_empty_think')
EXAMPLE = [
    {'role': 'user', 'content': 'What is 2+2?'},
    {'role': 'assistant', 'content': 'It is 4.'},
    {'role': 'user', 'content': 'And 3+3?'},
    {'role': 'assistant', 'content': 'It is 6.'},
]
OPEN, CLOSE = '[[', ']]'
GREEN, RESET = '\033[1;32m', '\033[0m'


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a usage error is an lmforge error: message, exit 2, no traceback
        raise ArgumentError('', f'{message}\n{self.format_usage().strip()}')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='lmforge template', description='Show how a chat template renders and masks a conversation.')
    sub = parser.add_subparsers(dest='action', required=True, metavar='{show,list}')
    show = sub.add_parser('show', help='render an example with the trained tokens marked',
                          description='Render an example conversation through the model\'s chat template and mark '
                                      'the tokens that take loss.')
    show.add_argument('--model', required=True, help='model directory or hub id (its tokenizer and template)')
    show.add_argument('--dataset', help='a data file: its row --row is the example (default: a built-in one)')
    show.add_argument('--row', type=int, default=1, help='1-based row of --dataset (default 1)')
    show.add_argument('--template', help='template override: a registry name (see `list`) or a .jinja file')
    show.add_argument('--system', help='system prompt for an example without one')
    show.add_argument('--loss_scale', default='default', choices=LOSS_SCALES, help='which assistant turns train')
    show.add_argument('--color', default='auto', choices=('auto', 'always', 'never'),
                      help='mark trained tokens in colour (auto: when printing to a terminal) or with [[ ]]')
    show.add_argument('--use_hf', action='store_true', help='resolve a hub id on the Hugging Face Hub')
    show.add_argument('--trust_remote_code', action='store_true', help='allow tokenizer code from the model repo')
    sub.add_parser('list', help='list the registry templates and the named template fixes')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lmforge template`; returns the exit status (2 on an error, printed without a traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if args.action == 'list':
            print(list_text())
        else:
            print(show_text(args))
    except LmforgeError as e:
        print(f'lmforge template: error: {e}', file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    return 0


def list_text() -> str:
    from lmforge.templates.fixes import FIXES
    from lmforge.templates.registry import list_templates

    lines = ['registry templates (--template NAME):']
    lines += [f'  {name:<22} {doc}' for name, doc in list_templates().items()]
    lines += ['', "named fixes (applied automatically to a model's own template with the defect):"]
    lines += [f'  {fix.name:<22} {fix.doc}' for fix in FIXES]
    return '\n'.join(lines)


def load_example(dataset: str | None, row: int, system: str | None) -> tuple[list[dict], list | None, str]:
    """``(messages, tools, where)`` of the example to show."""
    from lmforge.templates.registry import with_system

    if not dataset:
        return with_system(EXAMPLE, system), None, 'built-in example'
    from lmforge.data.formats import RowError, normalize
    from lmforge.data.readers import read_dataset

    rows = read_dataset(dataset)
    if not 1 <= row <= len(rows):
        raise ArgumentError('row', f'{dataset} has {len(rows)} rows; --row must be 1..{len(rows)}')
    try:
        item = normalize(rows[row - 1].data, 'sft')
    except RowError as e:
        raise DataError(f'{rows[row - 1].where}: {e.field}: {e.problem}') from None
    return with_system(item['messages'], system), item.get('tools'), rows[row - 1].where


def marked(tokenizer, sample, color: bool) -> str:
    """The sample's text with trained tokens marked: runs of tokens decoded together, so text is never cut."""
    from lmforge.templates.encode import IGNORE_INDEX

    parts, run, trained = [], [], None
    for tid, label in zip(sample.input_ids, sample.labels):
        now = label != IGNORE_INDEX
        if run and now != trained:
            parts.append((tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                          trained))
            run = []
        run.append(tid)
        trained = now
    if run:
        parts.append((tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False), trained))
    start, end = (GREEN, RESET) if color else (OPEN, CLOSE)
    return ''.join(f'{start}{text}{end}' if on else text for text, on in parts)


def show_text(args) -> str:
    from lmforge.hub import resolve_model
    from lmforge.models import load_tokenizer
    from lmforge.templates.encode import (IGNORE_INDEX, encode_chat_samples, end_of_turn_tokens, stop_token_ids,
                                          tokenize_spans)
    from lmforge.templates.registry import apply_template
    from lmforge.templates.render import render

    tokenizer = load_tokenizer(resolve_model(args.model, use_hf=args.use_hf), args.trust_remote_code)
    source = apply_template(tokenizer, args.template)
    messages, tools, where = load_example(args.dataset, args.row, args.system)
    samples, split = encode_chat_samples(tokenizer, messages, tools, args.loss_scale)
    color = args.color == 'always' or (args.color == 'auto' and sys.stdout.isatty())
    eot = end_of_turn_tokens(tokenizer)
    stops = [f'{tokenizer.convert_ids_to_tokens(i)} ({i})' for i in stop_token_ids(tokenizer)]
    lines = [f'template: {source}',
             f'example: {where} ({"/".join(m.get("role", "?") for m in messages)})',
             f'end-of-turn tokens: {" ".join(eot) if eot else "none found"}',
             f'stop tokens: {", ".join(stops) if stops else "none"}']
    if not samples:
        lines.append('trained turns: none (no assistant message takes loss)')
        samples = [tokenize_spans(tokenizer, render(tokenizer, messages, tools=tools), [])]
    elif split:
        lines.append(f'prefix-consistent: no: the template renders earlier turns differently from the final one, '
                     f'so each of the {len(samples)} trained turns is its own sequence, rendered as inference sees it')
    else:
        lines.append('prefix-consistent: yes: the conversation is one sequence')
    legend = 'trained tokens in green' if color else f'trained tokens between {OPEN} and {CLOSE}'
    for k, sample in enumerate(samples, 1):
        trained = sum(label != IGNORE_INDEX for label in sample.labels)
        lines += ['', f'--- sequence {k} of {len(samples)}: {len(sample.input_ids)} tokens, {trained} trained '
                      f'({legend}) ---', marked(tokenizer, sample, color)]
    return '\n'.join(lines)
