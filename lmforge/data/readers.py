"""Read dataset rows from files, directories and hub ids, keeping where each row came from (file, row number).

``path#N`` samples N rows (seeded); N larger than the file repeats rows, like ms-swift.
"""
from __future__ import annotations

import glob
import json
import os
import random
from dataclasses import dataclass

from lmforge.errors import DataError

SUFFIXES = ('.jsonl', '.json', '.csv', '.parquet', '.arrow', '.txt')


@dataclass
class Row:
    data: dict
    source: str  # file path or hub id
    index: int   # 1-based line number for jsonl, 1-based row number otherwise

    @property
    def where(self) -> str:
        return f'{self.source}:{self.index}'


def split_spec(spec: str) -> tuple[str, int | None]:
    """'data.jsonl#100' -> ('data.jsonl', 100)."""
    if '#' in spec:
        path, n = spec.rsplit('#', 1)
        if n.strip().isdigit():
            return path, int(n)
        raise DataError(f'--dataset {spec}: the part after # must be a row count, got {n!r}')
    return spec, None


def read_dataset(spec: str, seed: int = 42) -> list[Row]:
    path, n = split_spec(spec)
    rows = _read_path(path)
    if n is not None:
        rng = random.Random(seed)
        if n <= len(rows):
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]
        else:  # more than the file holds: every row, then a sample of the rest
            rows = rows * (n // len(rows)) + [rows[i] for i in sorted(rng.sample(range(len(rows)), n % len(rows)))]
    return rows


def _read_path(path: str) -> list[Row]:
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        if os.path.isfile(os.path.join(expanded, 'dataset_info.json')) or \
                os.path.isfile(os.path.join(expanded, 'state.json')):
            return _read_hf_disk(expanded)
        files = sorted(f for f in glob.glob(os.path.join(expanded, '**', '*'), recursive=True)
                       if f.endswith(SUFFIXES))
        if not files:
            raise DataError(f'--dataset {path}: the directory holds no {"/".join(SUFFIXES)} files')
        return [row for f in files for row in _read_file(f)]
    if os.path.isfile(expanded):
        return _read_file(expanded)
    if expanded.endswith(SUFFIXES) or expanded.startswith(('.', '/', '~')) or path.count('/') > 1:
        raise DataError(f'--dataset {path}: file not found')
    return _read_hub(path)


def _read_file(path: str) -> list[Row]:
    if path.endswith('.jsonl'):
        return _read_jsonl(path)
    if path.endswith('.json'):
        return _read_json(path)
    if path.endswith('.txt'):
        with open(path, encoding='utf-8') as f:
            return [Row({'text': line.rstrip('\n')}, path, i) for i, line in enumerate(f, 1) if line.strip()]
    return _read_tabular(path)


def _read_jsonl(path: str) -> list[Row]:
    rows = []
    with open(path, encoding='utf-8') as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                rows.append(Row({'__error__': f'bad JSON line: {e.msg} at column {e.colno}'}, path, i))
                continue
            if not isinstance(data, dict):
                data = {'__error__': f'expected a JSON object, got {type(data).__name__}'}
            rows.append(Row(data, path, i))
    return rows


def _read_json(path: str) -> list[Row]:
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        try:  # a .json file that is really JSON lines
            return _read_jsonl(path)
        except Exception:  # noqa: BLE001
            raise DataError(f'{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}') from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f'{path}: expected a list of rows (or an object holding one list of rows)')
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a list of rows, got {type(data).__name__}')
    return [Row(r if isinstance(r, dict) else {'__error__': f'expected an object, got {type(r).__name__}'}, path, i)
            for i, r in enumerate(data, 1)]


def _read_tabular(path: str) -> list[Row]:
    import datasets

    kind = {'.csv': 'csv', '.parquet': 'parquet', '.arrow': 'arrow'}[os.path.splitext(path)[1]]
    try:
        ds = datasets.load_dataset(kind, data_files=path, split='train')
    except Exception as e:  # noqa: BLE001 - pyarrow/pandas raise many types for malformed files
        raise DataError(f'{path}: could not read as {kind}: {e}') from None
    return [Row(dict(r), path, i) for i, r in enumerate(ds, 1)]


def _read_hf_disk(path: str) -> list[Row]:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds['train'] if 'train' in ds else next(iter(ds.values()))
    return [Row(dict(r), path, i) for i, r in enumerate(ds, 1)]


def _read_hub(name: str) -> list[Row]:
    import datasets

    subset = None
    if ':' in name:
        name, subset = name.split(':', 1)
    try:
        ds = datasets.load_dataset(name, subset, split='train')
    except Exception as e:  # noqa: BLE001
        offline = os.environ.get('HF_HUB_OFFLINE') == '1' or os.environ.get('HF_DATASETS_OFFLINE') == '1'
        why = 'offline mode is on and it is not cached' if offline else f'{type(e).__name__}: {str(e)[:200]}'
        raise DataError(f'--dataset {name}: not a local file or directory, and loading it from the hub failed '
                        f'({why}). Pass a local jsonl/json/csv/parquet path, or run once with network access.') \
            from None
    return [Row(dict(r), name, i) for i, r in enumerate(ds, 1)]
