"""`lmforge data list|check|info`: the named datasets, and what a model's template makes of a dataset.

    lmforge data list [--tag TAG]
    lmforge data info NAME
    lmforge data check --dataset X [--dataset Y ...] --model M [--max_length N] [--template T] [--mode sft|pt]

``check`` reads every row, detects its format, encodes it through the model's chat template exactly as training does,
and reports per dataset: rows, detected formats, token-length percentiles, rows over --max_length, rows with no
trained tokens, and every invalid row as ``file:row: field: problem``. The exit code is 1 when invalid rows exist
(0 otherwise, 2 on an error such as a missing file).
"""
from __future__ import annotations

import argparse
import json
import sys

from lmforge.errors import ArgumentError, LmforgeError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a usage error is an lmforge error: message, exit 2, no traceback
        raise ArgumentError('', f'{message}\n{self.format_usage().strip()}')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='lmforge data', description='List the named datasets; check a dataset against a model.')
    sub = parser.add_subparsers(dest='action', required=True, metavar='{list,info,check}')
    ls = sub.add_parser('list', help='the registry\'s named datasets (--dataset NAME)')
    ls.add_argument('--tag', help='only datasets with this tag (e.g. preference, math, eval, multimodal, pretrain)')
    ls.add_argument('--custom_dataset_info', action='append', default=[], help='also list the datasets of this file')
    ls.add_argument('--json', action='store_true', help='print the entries as JSON')
    info = sub.add_parser('info', help='one named dataset in full')
    info.add_argument('name', help='registry name or hub id')
    info.add_argument('--custom_dataset_info', action='append', default=[], help='a file registering more datasets')
    check = sub.add_parser('check', help='validate and measure a dataset with a model\'s tokenizer and template',
                           description='Read every row, encode it as training would, report problems; exit 1 when '
                                       'invalid rows exist.')
    check.add_argument('--dataset', action='append', required=True, help='a --dataset spec (repeatable)')
    check.add_argument('--model', required=True, help='model directory or hub id (its tokenizer and template)')
    check.add_argument('--max_length', type=int, default=2048, help='the --max_length of training (default 2048)')
    check.add_argument('--truncation_strategy', default='delete', choices=('delete', 'left', 'right'))
    check.add_argument('--mode', default='sft', choices=('sft', 'pt'), help='sft (chat, default) or pt (plain text)')
    check.add_argument('--template', help='template override: a registry name or a .jinja file')
    check.add_argument('--system', help='default system prompt for rows without one')
    check.add_argument('--loss_scale', default='default', choices=('default', 'last_round', 'all',
                                                                   'ignore_empty_think'))
    check.add_argument('--columns', help='rename columns, JSON: \'{"src": "dst"}\'')
    check.add_argument('--custom_dataset_info', action='append', default=[], help='a file registering datasets')
    check.add_argument('--dataset_num_proc', type=int, default=1, help='processes for encoding')
    check.add_argument('--seed', type=int, default=42, help='seed of #N sampling')
    check.add_argument('--max_shown', type=int, default=0, help='list at most N invalid rows per dataset (0: all)')
    check.add_argument('--use_hf', action='store_true', help='hub ids on the Hugging Face Hub (else ModelScope)')
    check.add_argument('--trust_remote_code', action='store_true')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lmforge data`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        from lmforge.data.registry import load_custom_dataset_info
        for path in args.custom_dataset_info:
            load_custom_dataset_info(path)
        if args.action == 'list':
            print(list_text(args.tag, as_json=args.json))
            return 0
        if args.action == 'info':
            print(info_text(args.name))
            return 0
        text, invalid = check_text(args)
        print(text)
        return 1 if invalid else 0
    except LmforgeError as e:
        print(f'lmforge data: error: {e}', file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0


def _entry_dict(e) -> dict:
    out = {'name': e.name, 'hf': e.hf, 'ms': e.ms, 'path': e.path, 'subsets': e.subsets, 'split': e.split,
           'columns': e.columns, 'format': e.format, 'preprocess': e.preprocess if isinstance(e.preprocess, str)
           else getattr(e.preprocess, '__name__', None), 'huge': e.huge, 'tags': e.tags, 'help': e.help}
    return {k: v for k, v in out.items() if v not in (None, [], {}, False)}


def list_text(tag: str | None = None, as_json: bool = False) -> str:
    from lmforge.data.registry import list_datasets

    entries = list_datasets(tag)
    if not entries:
        from lmforge.data.registry import list_datasets as all_entries
        tags = sorted({t for e in all_entries() for t in e.tags})
        raise ArgumentError('tag', f'no dataset has the tag {tag!r}; tags: {", ".join(tags)}')
    if as_json:
        return json.dumps([_entry_dict(e) for e in entries], ensure_ascii=False, indent=1)
    lines = [f'{len(entries)} datasets' + (f' tagged {tag!r}' if tag else '') +
             ' (--dataset NAME[:SUBSET][#N]; ModelScope ids by default, --use_hf for the Hugging Face Hub):', '']
    width = max(len(e.name) for e in entries)
    for e in entries:
        ids = ' | '.join(x for x in (f'hf:{e.hf}' if e.hf else '', f'ms:{e.ms}' if e.ms else '',
                                     f'path:{e.path}' if e.path else '') if x)
        extra = f'  subsets: {"/".join(e.subset_names)}' if e.subsets and len(e.subsets) <= 6 else \
            (f'  subsets: {len(e.subsets)}' if e.subsets else '')
        lines.append(f'  {e.name:<{width}}  {ids}  [{", ".join(e.tags)}]{extra}' + ('  (huge: --streaming)'
                                                                                   if e.huge else ''))
    return '\n'.join(lines)


def info_text(name: str) -> str:
    from lmforge.data.registry import find_dataset, list_datasets

    entry = find_dataset(name)
    if entry is None:
        import difflib
        hint = difflib.get_close_matches(name, [e.name for e in list_datasets()], n=3)
        raise ArgumentError('', f'no registered dataset {name!r}' + (f'; did you mean {", ".join(hint)}?' if hint
                                                                     else '; see `lmforge data list`'))
    return json.dumps(_entry_dict(entry), ensure_ascii=False, indent=1)


def percentiles(values: list[int], qs=(50, 90, 95, 99)) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    out = {f'p{q}': ordered[min(len(ordered) - 1, max(0, -(-q * len(ordered) // 100) - 1))] for q in qs}
    out['max'] = ordered[-1]
    out['min'] = ordered[0]
    return out


def check_dataset(spec: str, tokenizer, args) -> tuple[list[str], int]:
    """The report lines of one dataset and its number of invalid rows."""
    from lmforge.data.dataset import encode_rows
    from lmforge.data.readers import read_dataset

    rows = read_dataset(spec, seed=args.seed, use_hf=args.use_hf or None)
    columns = parse_columns(args.columns)
    _, report = encode_rows(rows, tokenizer, args.mode, args.max_length, args.truncation_strategy,
                            loss_scale=args.loss_scale, system=args.system, columns=columns,
                            num_proc=args.dataset_num_proc, desc=f'checking {spec}')
    formats = ', '.join(f'{k} {v}' for k, v in sorted(report.formats.items(), key=lambda kv: -kv[1]))
    p = percentiles(report.lengths)
    over = sum(1 for n in report.lengths if n > args.max_length)
    lines = [f'dataset {spec}',
             f'  rows: {report.rows}',
             f'  format: {formats or "none"}',
             f'  samples: {report.samples} ({report.tokens} tokens, {report.trained_tokens} trained)'
             + (f'; {report.split_conversations} conversations split into one sequence per turn'
                if report.split_conversations else ''),
             '  tokens per sample: ' + (', '.join(f'{k} {v}' for k, v in p.items()) if p else 'no sample'),
             f'  over --max_length {args.max_length}: {report.too_long} rows ({over} sequences; '
             f'--truncation_strategy {args.truncation_strategy})',
             f'  no trained tokens: {report.no_labels} samples',
             f'  invalid rows: {len(report.invalid)}']
    shown = report.invalid if not args.max_shown else report.invalid[:args.max_shown]
    lines += [f'    {e}' for e in shown]
    if len(shown) < len(report.invalid):
        lines.append(f'    ... and {len(report.invalid) - len(shown)} more')
    return lines, len(report.invalid)


def parse_columns(text: str | None) -> dict | None:
    """--columns as the training commands read it: a JSON object mapping column names to column names."""
    if not text:
        return None
    try:
        columns = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArgumentError('columns', f'expected a JSON object, got {text!r} ({e.msg})') from None
    if not isinstance(columns, dict):
        raise ArgumentError('columns', f'expected a JSON object, got {text!r}')
    from lmforge.args.train import check_columns
    check_columns(columns)
    return columns


def check_text(args) -> tuple[str, int]:
    from lmforge.hub import resolve_model
    from lmforge.models import load_tokenizer
    from lmforge.templates import apply_template

    if args.max_length <= 1:
        raise ArgumentError('max_length', f'must be at least 2, got {args.max_length}')
    if args.dataset_num_proc < 1:
        raise ArgumentError('dataset_num_proc', f'must be positive, got {args.dataset_num_proc}')
    if args.max_shown < 0:
        raise ArgumentError('max_shown', f'must be >= 0 (0: list every invalid row), got {args.max_shown}')
    parse_columns(args.columns)  # a bad value fails before the model loads
    tokenizer = load_tokenizer(resolve_model(args.model, use_hf=args.use_hf), args.trust_remote_code)
    lines = [f'model: {args.model}']
    if args.mode == 'sft':
        lines.append(f'chat template: {apply_template(tokenizer, args.template)}')
    invalid = 0
    for spec in args.dataset:
        got, bad = check_dataset(spec, tokenizer, args)
        lines += [''] + got
        invalid += bad
    lines += ['', f'{invalid} invalid rows in total' + (': training skips them (--strict stops at the first)'
                                                        if invalid else '')]
    return '\n'.join(lines), invalid
