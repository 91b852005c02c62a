"""Named datasets: the registry file (registry.yaml, shipped with the package), `register_dataset(...)` and
``--custom_dataset_info file.json``.

An entry names a dataset on the hubs (``hf``/``ms`` ids), its subsets and splits, a column mapping applied before
format detection, and optionally a row transform (``preprocess``: a callable, or the name of a built-in one in
`PREPROCESSORS`). ``--dataset NAME[:SUBSET][#N]`` and ``--dataset HUB_ID`` both find it.

``--custom_dataset_info`` reads ms-swift's format (a list of objects with ``ms_dataset_id``, ``hf_dataset_id``,
``dataset_path``, ``dataset_name``, ``subsets``, ``split``, ``columns``, ``tags``), this registry's own keys, or
LLaMA-Factory's ``dataset_info.json`` (an object of ``name: {file_name | hf_hub_url | ms_hub_url, columns, ...}``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable

from lmforge.errors import DataError

REGISTRY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'registry.yaml')
ENTRY_KEYS = {'name', 'hf', 'ms', 'path', 'subsets', 'split', 'columns', 'format', 'preprocess', 'huge', 'tags',
              'help', 'hf_subsets_are_data_dirs'}
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*$')
_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$')


# --------------------------------------------------------------------------- built-in row transforms

def _hh_rlhf(row: dict) -> dict:
    """Anthropic HH transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") -> messages + rejected_response."""
    def turns(text: str, field: str) -> list[dict]:
        if not isinstance(text, str):
            return [{'role': 'user', 'content': text}]  # the row error names the field below
        parts = re.split(r'\n\n(Human|Assistant): ', '\n\n' + text.lstrip('\n'))
        msgs = [{'role': 'user' if who == 'Human' else 'assistant', 'content': said.strip()}
                for who, said in zip(parts[1::2], parts[2::2])]
        if not msgs:
            from lmforge.data.formats import RowError
            raise RowError(field, 'no "Human:"/"Assistant:" turns found')
        return msgs

    chosen, rejected = turns(row.get('chosen'), 'chosen'), turns(row.get('rejected'), 'rejected')
    if chosen[:-1] != rejected[:-1]:
        from lmforge.data.formats import RowError
        raise RowError('rejected', 'the rejected transcript has a different conversation before the answer')
    return {'messages': chosen, 'rejected_response': rejected[-1]['content']}


def _multiple_choice(row: dict) -> dict:
    """MMLU / MMLU-Pro / C-Eval / CMMLU / ARC / HellaSwag rows -> a lettered question and the answer letter."""
    letters = 'ABCDEFGHIJKLMNOP'
    get = {k.lower(): v for k, v in row.items()}
    question = get.get('question') or get.get('ctx') or ''
    options = get.get('choices') if 'choices' in get else get.get('options') or get.get('endings')
    if isinstance(options, dict):  # ARC: {'text': [...], 'label': [...]}
        options = options.get('text')
    if options is None:
        options = [get[c.lower()] for c in letters if c.lower() in get]
    answer = next((get[k] for k in ('answer', 'answerkey', 'label') if get.get(k) not in (None, '')), None)
    if isinstance(answer, int) or (isinstance(answer, str) and answer.isdigit()):
        answer = letters[int(answer)]
    lines = [str(question)] + [f'{letters[i]}. {o}' for i, o in enumerate(options or [])]
    return {'query': '\n'.join(lines) + '\nAnswer:', 'response': answer}


PREPROCESSORS: dict[str, Callable[[dict], dict]] = {'hh_rlhf': _hh_rlhf, 'multiple_choice': _multiple_choice}


# --------------------------------------------------------------------------- entries

@dataclass
class DatasetEntry:
    name: str
    hf: str | None = None
    ms: str | None = None
    path: str | None = None                         # a local file/dir (custom entries)
    subsets: list = field(default_factory=list)     # names, or {'name': ..., 'columns': {...}}
    split: list = field(default_factory=lambda: ['train'])
    columns: dict = field(default_factory=dict)
    format: str | None = None
    preprocess: Callable | str | None = None
    huge: bool = False
    tags: list = field(default_factory=list)
    help: str | None = None
    hf_subsets_are_data_dirs: bool = False
    origin: str = 'registry'

    @property
    def subset_names(self) -> list[str]:
        return [s['name'] if isinstance(s, dict) else s for s in self.subsets]

    def _subset_columns(self, name) -> dict:
        for s in self.subsets:
            if isinstance(s, dict) and s['name'] == name:
                return s.get('columns') or {}
        return {}

    def _preprocess_fn(self) -> Callable | None:
        if self.preprocess is None or callable(self.preprocess):
            return self.preprocess
        return PREPROCESSORS[self.preprocess]

    def fingerprint(self) -> str:
        """What changes the rows this entry yields (for the preprocessing cache)."""
        fn = self._preprocess_fn()
        code = ''
        if fn is not None:
            import inspect
            try:
                code = inspect.getsource(fn)
            except (OSError, TypeError):
                code = f'{getattr(fn, "__module__", "")}.{getattr(fn, "__qualname__", repr(fn))}'
        blob = json.dumps([self.hf, self.ms, self.path, self.subsets, self.split, self.columns, code],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def pick_subsets(self, wanted: list[str]) -> list:
        if not wanted:
            return self.subset_names or [None]
        known = self.subset_names
        for w in wanted:
            if known and w not in known:
                import difflib
                hint = difflib.get_close_matches(w, known, n=1)
                raise DataError(f'--dataset {self.name}:{w}: no subset {w!r}; {self.name} has '
                                f'{", ".join(known)}' + (f'. Did you mean {hint[0]!r}?' if hint else ''))
        return wanted

    def rows(self, subsets: list[str] | None = None, use_hf: bool | None = None, streaming: bool = False):
        from lmforge.data.readers import Row, _rows, parse_spec, read_hub

        fn = self._preprocess_fn()
        for subset in self.pick_subsets(subsets or []):
            columns = {**self.columns, **self._subset_columns(subset)}
            transform = _transform(columns, fn)
            if self.path:
                for row in _rows(parse_spec(self.path), use_hf, streaming):
                    data = row.data if '__error__' in row.data else transform(row.data)
                    if data is not None:
                        yield Row(data, row.source, row.index)
                continue
            yield from read_hub(self.name, [subset] if subset else [], self.split, use_hf=use_hf,
                                streaming=streaming, ms_id=self.ms, hf_id=self.hf, transform=transform,
                                label=self.name, data_dir=self.hf_subsets_are_data_dirs)


def _transform(columns: dict, fn: Callable | None) -> Callable[[dict], dict | None]:
    from lmforge.data.formats import RowError, rename_columns

    def apply(data: dict) -> dict | None:
        data = rename_columns(data, columns)
        if fn is None:
            return data
        try:
            return fn(data)
        except RowError as e:
            return {'__error__': f'{e.field}: {e.problem}'}
        except Exception as e:  # noqa: BLE001 - a user preprocess failing on one row is that row's problem
            return {'__error__': f'preprocess failed: {type(e).__name__}: {e}'}
    return apply


def check_entry(raw: dict) -> list[str]:
    """Problems of one registry entry (as read from the file); empty when well-formed."""
    problems = []
    name = raw.get('name')
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f'name {name!r}: expected letters, digits, ".", "_" or "-"')
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        problems.append(f'unknown keys {sorted(unknown)}')
    if not any(raw.get(k) for k in ('hf', 'ms', 'path')):
        problems.append('needs an hf or ms id (or a path)')
    for k in ('hf', 'ms'):
        if raw.get(k) is not None and (not isinstance(raw[k], str) or not _ID.match(raw[k])):
            problems.append(f'{k} {raw[k]!r}: not a hub id (org/name)')
    subsets = raw.get('subsets', [])
    if not isinstance(subsets, list) or not all(
            isinstance(s, str) and s or isinstance(s, dict) and isinstance(s.get('name'), str)
            and isinstance(s.get('columns', {}), dict) for s in subsets):
        problems.append('subsets: expected a list of names or {name, columns} objects')
    split = raw.get('split', ['train'])
    if not isinstance(split, list) or not split or not all(isinstance(s, str) and s for s in split):
        problems.append('split: expected a non-empty list of split names')
    columns = raw.get('columns', {})
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        problems.append('columns: expected {column: name} strings')
    from lmforge.data.formats import FORMATS
    if raw.get('format') is not None and raw['format'] not in FORMATS:
        problems.append(f'format {raw["format"]!r}: expected one of {", ".join(FORMATS)}')
    pre = raw.get('preprocess')
    if pre is not None and not callable(pre) and pre not in PREPROCESSORS:
        problems.append(f'preprocess {pre!r}: not a built-in ({", ".join(PREPROCESSORS)})')
    tags = raw.get('tags', [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        problems.append('tags: expected a list of strings')
    return problems


def _entry(raw: dict, origin: str) -> DatasetEntry:
    problems = check_entry(raw)
    if problems:
        raise DataError(f'{origin}: dataset {raw.get("name")!r}: ' + '; '.join(problems))
    kwargs = {k: v for k, v in raw.items() if k in ENTRY_KEYS}
    return DatasetEntry(**kwargs, origin=origin)


# --------------------------------------------------------------------------- the registry

_BUILTIN: dict[str, DatasetEntry] | None = None
_ADDED: dict[str, DatasetEntry] = {}


def registry_rows() -> list[dict]:
    """The raw entries of the registry file."""
    import yaml

    loader = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)
    with open(REGISTRY_FILE, encoding='utf-8') as f:
        rows = yaml.load(f, Loader=loader)
    if not isinstance(rows, list):
        raise DataError(f'{REGISTRY_FILE}: expected a list of datasets')
    return rows


def _builtin() -> dict[str, DatasetEntry]:
    global _BUILTIN
    if _BUILTIN is None:
        _BUILTIN = {}
        for raw in registry_rows():
            entry = _entry(raw, REGISTRY_FILE)
            _BUILTIN[entry.name] = entry
    return _BUILTIN


def list_datasets(tag: str | None = None) -> list[DatasetEntry]:
    entries = {**_builtin(), **_ADDED}.values()
    if tag:
        entries = [e for e in entries if tag.lower() in (t.lower() for t in e.tags)]
    return sorted(entries, key=lambda e: e.name.lower())


def find_dataset(name: str) -> DatasetEntry | None:
    """The entry called ``name``, or whose hf/ms id is ``name``."""
    everything = {**_builtin(), **_ADDED}
    if name in everything:
        return everything[name]
    lower = name.lower()
    for e in [*_ADDED.values(), *_builtin().values()]:
        if e.name.lower() == lower or name in (e.hf, e.ms):
            return e
    return None


def register_dataset(name: str, hf_dataset_id: str | None = None, ms_dataset_id: str | None = None, *,
                     dataset_path: str | None = None, subsets: list | None = None, split: list | None = None,
                     columns: dict | None = None, preprocess: Callable | str | None = None,
                     tags: list | None = None, help: str | None = None, exist_ok: bool = False) -> DatasetEntry:
    """Add a dataset to the registry for this process: ``--dataset name`` then finds it.

    ``preprocess``: a function ``row -> row`` (or None to drop the row) applied after ``columns``, or the name of a
    built-in transform; raising `lmforge.data.formats.RowError` marks the row invalid with that message.
    """
    if not exist_ok and (name in _ADDED or name in _builtin()):
        raise DataError(f'register_dataset: {name!r} is already registered (pass exist_ok=True to replace it)')
    raw = {'name': name, 'hf': hf_dataset_id, 'ms': ms_dataset_id, 'path': dataset_path,
           'subsets': list(subsets or []), 'split': list(split or ['train']), 'columns': dict(columns or {}),
           'preprocess': preprocess, 'tags': list(tags or []), 'help': help}
    raw = {k: v for k, v in raw.items() if v is not None}
    entry = _entry(raw, 'register_dataset')
    _ADDED[name] = entry
    return entry


def unregister_dataset(name: str) -> None:
    _ADDED.pop(name, None)


# ms-swift's custom_dataset_info keys -> ours
_SWIFT_KEYS = {'ms_dataset_id': 'ms', 'hf_dataset_id': 'hf', 'dataset_path': 'path', 'dataset_name': 'name',
               'subsets': 'subsets', 'split': 'split', 'columns': 'columns', 'tags': 'tags', 'help': 'help'}
# LLaMA-Factory's column roles -> lmforge column names (its "columns" map role -> column)
_LF_ROLES = {'prompt': 'instruction', 'query': 'input', 'response': 'output', 'history': 'history',
             'system': 'system', 'messages': 'messages', 'chosen': 'chosen', 'rejected': 'rejected',
             'kto_tag': 'label', 'images': 'images', 'videos': 'videos', 'audios': 'audios', 'tools': 'tools'}


def load_custom_dataset_info(path: str) -> list[DatasetEntry]:
    """Register every dataset of a JSON/YAML file (ms-swift, LLaMA-Factory or lmforge format)."""
    flag = '--custom_dataset_info'
    if not os.path.isfile(path):
        raise DataError(f'{flag} {path}: file not found')
    try:
        with open(path, encoding='utf-8-sig') as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f'{flag} {path}: not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8') from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if not path.endswith(('.yaml', '.yml')):
            raise DataError(f'{flag} {path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}') from None
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise DataError(f'{flag} {path}: not valid YAML: {e}') from None
    base = os.path.dirname(os.path.abspath(path))
    raws = []
    if isinstance(data, dict):  # LLaMA-Factory: {name: {file_name | hf_hub_url | ms_hub_url, columns, ...}}
        for name, info in data.items():
            if not isinstance(info, dict):
                raise DataError(f'{flag} {path}: {name!r}: expected an object')
            columns = info.get('columns') or {}
            if not isinstance(columns, dict) or not all(isinstance(c, str) for c in columns.values()):
                raise DataError(f'{flag} {path}: {name!r}: columns: expected {{role: column name}}, got {columns!r}')
            if info.get('file_name') is not None and not isinstance(info['file_name'], str):
                raise DataError(f'{flag} {path}: {name!r}: file_name: expected a string, got {info["file_name"]!r}')
            raw = {'name': name, 'hf': info.get('hf_hub_url'), 'ms': info.get('ms_hub_url'),
                   'path': os.path.join(base, info['file_name']) if info.get('file_name') else None,
                   'columns': {col: _LF_ROLES.get(role, role) for role, col in (info.get('columns') or {}).items()
                               if col != _LF_ROLES.get(role, role)}}
            if info.get('subset'):
                raw['subsets'] = [info['subset']]
            if info.get('split'):
                raw['split'] = [info['split']]
            raws.append({k: v for k, v in raw.items() if v})
    elif isinstance(data, list):
        for k, item in enumerate(data):
            if not isinstance(item, dict):
                raise DataError(f'{flag} {path}: item {k}: expected an object')
            raw = {_SWIFT_KEYS.get(key, key): v for key, v in item.items()}
            if raw.get('path') is not None and not isinstance(raw['path'], str):
                raise DataError(f'{flag} {path}: item {k}: dataset_path: expected a string, got {raw["path"]!r}')
            if raw.get('path') and not os.path.isabs(os.path.expanduser(raw['path'])) and \
                    not os.path.exists(raw['path']):
                raw['path'] = os.path.join(base, raw['path'])
            raw.setdefault('name', raw.get('ms') or raw.get('hf') or raw.get('path'))
            if isinstance(raw.get('split'), str):
                raw['split'] = [raw['split']]
            raws.append(raw)
    else:
        raise DataError(f'{flag} {path}: expected a list of datasets (ms-swift format) or an object of '
                        'name: {...} (LLaMA-Factory format)')
    out = []
    for raw in raws:
        raw = {k: v for k, v in raw.items() if v is not None}
        if raw.get('path') and not _NAME.match(str(raw['name'])):
            raw['name'] = re.sub(r'[^A-Za-z0-9._-]+', '-', os.path.basename(str(raw['name']))).strip('-') or 'data'
        if raw.get('name') and not _NAME.match(str(raw['name'])) and (raw.get('ms') or raw.get('hf')):
            raw['name'] = str(raw['name']).replace('/', '--')
        entry = _entry(raw, f'{flag} {path}')
        _ADDED[entry.name] = entry
        out.append(entry)
    return out
