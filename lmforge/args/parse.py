"""One set of names for three front doors: CLI flags, YAML keys and Python keyword arguments.

Every workflow's arguments are a dataclass. Each field carries its help text in ``metadata['help']`` and,
for a closed set of values, ``metadata['choices']``. This module turns such a dataclass into an argparse
parser, reads YAML files into it, and checks keyword arguments against it, so that ``--lora_rank 8``,
``lora_rank: 8`` and ``lora_rank=8`` are the same thing and a misspelling gets a did-you-mean.

Standard library only: ``lmforge --help`` must not import torch or transformers.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
import types
import typing
from typing import Any, Union

from lmforge.errors import ArgumentError


def _optional(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _unwrap(tp) -> tuple[Any, bool]:
    """(base type, is_list) of a field annotation: Optional[X] -> X, list[X] -> (X, True)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(inner[0]) if len(inner) == 1 else (str, False)
    if origin in (list, tuple):
        (item, *_) = typing.get_args(tp) or (str,)
        return item, True
    return tp, False


def parse_bool(value: Any, flag: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ('true', '1', 'yes', 'y', 'on'):
        return True
    if text in ('false', '0', 'no', 'n', 'off'):
        return False
    raise ArgumentError(flag, f'expected true or false, got {value!r}')


def convert(field: dataclasses.Field, value: Any) -> Any:
    """Convert a raw value (CLI string, YAML scalar/list, Python object) to the field's type, or raise naming it."""
    hints = typing.get_type_hints(_owner_of(field))
    base, is_list = _unwrap(hints[field.name])
    if value is None:
        if not _optional(hints[field.name]):  # YAML `key:` or `key: null`, or a keyword argument None
            raise ArgumentError(field.name, f'needs a value (default: {_default_text(field)}); got none')
        return None
    if is_list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ArgumentError(field.name, f'expected a list, got {value!r}')
        return [_scalar(field, base, v) for v in value]
    return _scalar(field, base, value)


def _scalar(field, base, value):
    name = field.name
    if base is bool:
        out = parse_bool(value, name)
    elif base in (int, float):
        if isinstance(value, bool):
            raise ArgumentError(name, f'expected a number, got {value!r}')
        try:
            out = base(value) if base is float or isinstance(value, int) else _int(str(value))
        except (TypeError, ValueError):
            kind = 'an integer' if base is int else 'a number'
            raise ArgumentError(name, f'expected {kind}, got {value!r}') from None
        if not math.isfinite(out):
            raise ArgumentError(name, f'expected a finite number, got {value!r}')
    elif base is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ArgumentError(name, f'expected a JSON object, got {value!r} ({e.msg})') from None
        if not isinstance(value, dict):
            raise ArgumentError(name, f'expected a JSON object, got {value!r}')
        out = value
    else:
        if isinstance(value, (dict, list, tuple)):
            raise ArgumentError(name, f'expected a single value, got {value!r}')
        out = str(value) if not isinstance(value, str) else value
    choices = field.metadata.get('choices')
    if choices and out not in choices:
        hint = difflib.get_close_matches(str(out), [str(c) for c in choices], n=1)
        extra = f' Did you mean {hint[0]!r}?' if hint else ''
        raise ArgumentError(name, f'invalid value {out!r}; choose one of {", ".join(map(str, choices))}.{extra}')
    return out


def _int(text: str) -> int:
    """Decimal (leading zeros allowed: 007) or 0x/0o/0b literals."""
    try:
        return int(text)
    except ValueError:
        return int(text, 0)


_OWNERS: dict[int, type] = {}


def _owner_of(field: dataclasses.Field) -> type:
    return _OWNERS[id(field)]


def fields_of(cls) -> dict[str, dataclasses.Field]:
    out = {}
    for f in dataclasses.fields(cls):
        _OWNERS[id(f)] = cls
        out[f.name] = f
    return out


def unknown_key_error(cls, key: str, source: str) -> ArgumentError:
    names = list(fields_of(cls))
    hint = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    extra = f' Did you mean --{hint[0]}?' if hint else f' See `lmforge {cls.command} --help`.'
    return ArgumentError('', f'unknown argument {key!r} ({source}).{extra}')


def from_mapping(cls, values: dict, source: str) -> dict:
    """Check and convert a {name: value} mapping (YAML or kwargs) against the dataclass ``cls``."""
    fields = fields_of(cls)
    out = {}
    for key, value in values.items():
        key = str(key).replace('-', '_')
        if key not in fields:
            raise unknown_key_error(cls, key, source)
        out[key] = convert(fields[key], value)
    return out


def load_yaml(path: str) -> dict:
    import yaml  # pyyaml is small; only imported when a config is given

    if not os.path.isfile(path):
        raise ArgumentError('config', f'file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ArgumentError('config', f'{path} is not valid YAML: {e}') from None
    if not isinstance(data, dict):
        raise ArgumentError('config', f'{path} must hold a mapping of argument names to values')
    return data


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return 'required'
    if isinstance(value, list):
        return ' '.join(map(str, value)) if value else '[]'
    return str(value)


class _Parser(argparse.ArgumentParser):
    """argparse that raises ArgumentError (with a did-you-mean) instead of printing usage and exiting."""

    def __init__(self, *a, owner=None, **kw):
        super().__init__(*a, **kw)
        self.owner = owner

    def error(self, message):
        if 'unrecognized arguments' in message:
            bad = message.split(':', 1)[1].split()
            flag = next((b for b in bad if b.startswith('-')), bad[0])
            raise unknown_key_error(self.owner, flag.lstrip('-').split('=')[0].replace('-', '_'), 'command line')
        raise ArgumentError('', message)


def build_parser(cls, prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, usage=f'{prog} [--flag value ...] [--config run.yaml]', description=(cls.__doc__ or '').strip().split('\n\n')[0], owner=cls,
                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument('--config', metavar='YAML', help='YAML file of these same arguments; flags given here win')
    hints = typing.get_type_hints(cls)
    for name, f in fields_of(cls).items():
        base, is_list = _unwrap(hints[name])
        help_text = f"{f.metadata.get('help', '')} (default: {_default_text(f)})"
        choices = f.metadata.get('choices')
        if choices:
            help_text += f" [{'|'.join(map(str, choices))}]"
        kw = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace('%', '%%'))
        if is_list:
            kw['nargs'] = '*'
        elif base is bool:
            kw.update(nargs='?', const='true', metavar='true|false')
        parser.add_argument(f'--{name}', **kw)
    return parser


def parse_args(cls, argv: list[str] | None = None, prog: str | None = None, **overrides):
    """Build ``cls`` from defaults < YAML (--config) < CLI flags < ``overrides``; then validate it."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(cls, prog or f'lmforge {cls.command}')
    ns = vars(parser.parse_args(argv))
    values = {}
    config = ns.pop('config', None)
    if config:
        values.update(from_mapping(cls, load_yaml(config), f'in {config}'))
    fields = fields_of(cls)
    for key, value in ns.items():
        values[key] = convert(fields[key], value)
    values.update(from_mapping(cls, overrides, 'keyword argument'))
    return make(cls, values)


def from_kwargs(cls, config: str | None = None, **kwargs):
    """The Python-SDK door: ``sft(model=..., dataset=[...])`` and ``sft(config='run.yaml', lora_rank=16)``."""
    values = from_mapping(cls, load_yaml(config), f'in {config}') if config else {}
    values.update(from_mapping(cls, kwargs, 'keyword argument'))
    return make(cls, values)


def make(cls, values: dict):
    obj = cls(**values)
    if hasattr(obj, 'validate'):
        obj.validate()
    return obj


def to_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def arg(default=dataclasses.MISSING, help: str = '', choices=None, factory=None):
    """A dataclass field with its CLI help and allowed values."""
    meta = {'help': help}
    if choices:
        meta['choices'] = tuple(choices)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
