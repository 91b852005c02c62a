"""Read dataset rows from files, directories, `datasets` save_to_disk folders, registry names and hub ids, keeping
where each row came from (file, row number).

A ``--dataset`` spec is ms-swift's syntax: ``PATH_OR_NAME[:SUBSET[/SUBSET...]][#N]``:

* a file (.jsonl .json .csv .parquet .arrow .txt), a directory of such files, or a ``save_to_disk`` folder;
* a registry name (``lmforge data list``) or a hub id: ModelScope by default, the Hugging Face Hub with ``--use_hf``
  (``USE_HF=1``), as ms-swift; offline (``HF_HUB_OFFLINE=1``) a dataset missing from the local cache is a clear error;
* ``:subset`` picks subsets of a hub dataset (several with ``/``); ``#N`` samples N rows (seeded; N larger than the
  data repeats rows, like ms-swift). With streaming, ``#N`` takes the first N rows.

`read_dataset` returns every row; `iter_dataset` yields them one at a time without holding the file in memory
(streaming).
"""
from __future__ import annotations

import glob
import json
import os
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

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


@dataclass
class Spec:
    """A parsed ``--dataset`` value."""
    text: str                           # as given
    path: str                           # file, directory, registry name or hub id
    subsets: list = field(default_factory=list)
    n: int | None = None
    flag: str = 'dataset'               # the flag that gave it, named in errors (dataset, val_dataset)

    @property
    def is_local(self) -> bool:
        return os.path.exists(os.path.expanduser(self.path))


def parse_spec(spec: str, flag: str = 'dataset') -> Spec:
    """'data.jsonl#100' -> path + 100 rows; 'org/name:sub1/sub2#5' -> hub id, subsets, 5 rows."""
    path, n = spec, None
    if '#' in spec:
        path, count = spec.rsplit('#', 1)
        if not count.strip().isdigit():
            raise DataError(f'--{flag} {spec}: the part after # must be a row count, got {count!r}')
        n = int(count)
        if n == 0:
            raise DataError(f'--{flag} {spec}: #0 selects no rows')
    subsets = []
    if not os.path.exists(os.path.expanduser(path)) and ':' in path and not path.startswith(('/', '.', '~')):
        path, sub = path.split(':', 1)
        subsets = [s for s in sub.split('/') if s]
        if not subsets:
            raise DataError(f'--{flag} {spec}: nothing after ":" (expected a subset name)')
    return Spec(spec, path, subsets, n, flag)


def read_dataset(spec: str, seed: int = 42, use_hf: bool | None = None, flag: str = 'dataset') -> list[Row]:
    s = parse_spec(spec, flag)
    rows = list(_rows(s, use_hf, streaming=False))
    if s.n is not None and rows:
        rows = sample_rows(rows, s.n, seed)
    return rows


def iter_rows(spec: str, seed: int = 42, use_hf: bool | None = None, flag: str = 'dataset') -> Iterator[Row]:
    """The rows of `read_dataset`, one at a time: a file is read as the rows are consumed (``#N`` sampling needs
    them all first)."""
    s = parse_spec(spec, flag)
    if s.n is not None:
        return iter(read_dataset(spec, seed, use_hf, flag))
    return _rows(s, use_hf, streaming=False)


def sample_rows(rows: list, n: int, seed: int) -> list:
    rng = random.Random(seed)
    if n <= len(rows):
        return [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]
    # more than the data holds: every row, then a sample of the rest
    return rows * (n // len(rows)) + [rows[i] for i in sorted(rng.sample(range(len(rows)), n % len(rows)))]


def iter_dataset(spec: str, use_hf: bool | None = None, flag: str = 'dataset') -> Iterator[Row]:
    """Rows one at a time, reading files incrementally (streaming); ``#N`` keeps the first N rows."""
    s = parse_spec(spec, flag)
    for k, row in enumerate(_rows(s, use_hf, streaming=True)):
        if s.n is not None and k >= s.n:
            return
        yield row


def local_files(path: str) -> list[str]:
    """The data files a local path stands for (one file, the files of a directory, or a save_to_disk folder)."""
    expanded = os.path.expanduser(path)
    if os.path.isfile(expanded):
        return [expanded]
    if is_saved_dataset(expanded):
        return sorted(f for f in glob.glob(os.path.join(expanded, '**', '*'), recursive=True) if os.path.isfile(f))
    return sorted(f for f in glob.glob(os.path.join(expanded, '**', '*'), recursive=True) if f.endswith(SUFFIXES))


def is_saved_dataset(path: str) -> bool:
    """A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f))
                                       for f in ('state.json', 'dataset_dict.json'))


def _rows(s: Spec, use_hf: bool | None, streaming: bool) -> Iterator[Row]:
    expanded = os.path.expanduser(s.path)
    if os.path.isdir(expanded):
        if is_saved_dataset(expanded):
            yield from _read_hf_disk(expanded)
            return
        files = local_files(expanded)
        if not files:
            raise DataError(f'--{s.flag} {s.path}: the directory holds no {"/".join(SUFFIXES)} files and is not a '
                            '`datasets` save_to_disk folder')
        for f in files:
            yield from _read_file(f, streaming)
        return
    if os.path.isfile(expanded):
        yield from _read_file(expanded, streaming)
        return
    if expanded.endswith(SUFFIXES) or s.path.startswith(('.', '/', '~')) or s.path.count('/') > 1:
        raise DataError(f'--{s.flag} {s.path}: file not found')
    from lmforge.data.registry import find_dataset
    entry = find_dataset(s.path)
    if entry is not None:
        yield from entry.rows(s.subsets, use_hf=use_hf, streaming=streaming)
        return
    yield from read_hub(s.path, s.subsets, ['train'], use_hf=use_hf, streaming=streaming)


# --------------------------------------------------------------------------- files

def _read_file(path: str, streaming: bool = False) -> Iterator[Row]:
    if path.endswith('.jsonl'):
        return _read_jsonl(path)
    if path.endswith('.json'):
        return iter(_read_json(path))
    if path.endswith('.txt'):
        return _read_txt(path)
    if streaming:
        return _stream_tabular(path)
    return iter(_read_tabular(path))


def _lines(path: str) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text, problem) of each line: text None and the problem said where a line is not UTF-8."""
    with open(path, 'rb') as f:
        for i, raw in enumerate(f, 1):
            try:  # a byte-order mark (Windows editors) is no part of the first row
                yield i, raw.decode('utf-8-sig' if i == 1 else 'utf-8').rstrip('\r\n'), ''
            except UnicodeDecodeError as e:
                yield i, None, (f'not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}): save the '
                                'file as UTF-8')


def _read_txt(path: str) -> Iterator[Row]:
    for i, line, problem in _lines(path):
        if line is None:
            yield Row({'__error__': problem}, path, i)
        elif line.strip():
            yield Row({'text': line}, path, i)


_ARRAY_IN_JSONL = ('the file holds a JSON array of rows, not one JSON object per line: name it .json, or write one '
                   'row per line')


def _read_jsonl(path: str) -> Iterator[Row]:
    for i, line, problem in _lines(path):
        if line is None:
            yield Row({'__error__': problem}, path, i)
            continue
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            problem = _ARRAY_IN_JSONL if i == 1 and line.lstrip().startswith('[') else \
                f'bad JSON line: {e.msg} at column {e.colno}'
            yield Row({'__error__': problem}, path, i)
            continue
        if isinstance(data, list) and i == 1 and data and all(isinstance(r, dict) for r in data):
            data = {'__error__': _ARRAY_IN_JSONL}
        elif not isinstance(data, dict):
            data = {'__error__': f'expected a JSON object, got {type(data).__name__}'}
        yield Row(data, path, i)


def _read_json(path: str) -> list[Row]:
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = raw.count(b'\n', 0, e.start) + 1
        raise DataError(f'{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}): save the file as UTF-8') \
            from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        rows = list(_read_jsonl(path))  # a .json file that is really JSON lines
        if rows and sum('__error__' in r.data for r in rows) <= len(rows) // 2:
            return rows
        raise DataError(f'{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}') from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f'{path}: expected a list of rows (or an object holding one list of rows)')
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a list of rows, got {type(data).__name__}')
    return [Row(r if isinstance(r, dict) else {'__error__': f'expected a JSON object, got {type(r).__name__}'},
                path, i) for i, r in enumerate(data, 1)]


def _read_tabular(path: str) -> list[Row]:
    import datasets

    kind = {'.csv': 'csv', '.parquet': 'parquet', '.arrow': 'arrow'}[os.path.splitext(path)[1]]
    try:
        ds = datasets.load_dataset(kind, data_files=path, split='train')
    except Exception as e:  # noqa: BLE001 - pyarrow/pandas raise many types for malformed files
        raise DataError(f'{path}: could not read as {kind}: {_root_cause(e)}') from None
    return [Row(dict(r), path, i) for i, r in enumerate(ds, 1)]


def _root_cause(e: BaseException) -> str:
    """The innermost error of a chain (`datasets` wraps the reader's own message in a generic one)."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return f'{type(e).__name__}: {e}' if isinstance(e, UnicodeDecodeError) else str(e)


def _stream_tabular(path: str) -> Iterator[Row]:
    """csv/parquet/arrow in record batches: memory bounded by one batch."""
    import pyarrow as pa

    kind = os.path.splitext(path)[1]
    try:
        if kind == '.parquet':
            import pyarrow.parquet as pq
            batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        elif kind == '.csv':
            import pyarrow.csv as pcsv
            batches = pcsv.open_csv(path)
        else:  # `datasets` writes the IPC stream format; plain Arrow files are the file format
            try:
                batches = pa.ipc.open_stream(pa.memory_map(path))
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(pa.memory_map(path))
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        i = 0
        for batch in batches:
            for r in batch.to_pylist():
                i += 1
                yield Row(r, path, i)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f'{path}: could not read as {kind[1:]}: {e}') from None


def _read_hf_disk(path: str) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:  # noqa: BLE001
        raise DataError(f'{path}: could not read the `datasets` save_to_disk folder: {e}') from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds['train'] if 'train' in ds else next(iter(ds.values()))
    for i, r in enumerate(ds, 1):
        yield Row(dict(r), path, i)


# --------------------------------------------------------------------------- hubs

def hub_offline() -> bool:
    return any(os.environ.get(k, '0').lower() in ('1', 'true', 'yes')
               for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'LMFORGE_OFFLINE'))


def read_hub(dataset_id: str, subsets: list, splits: list, use_hf: bool | None = None, streaming: bool = False,
             ms_id: str | None = None, hf_id: str | None = None,
             transform: Callable[[dict], dict] | None = None, label: str | None = None,
             data_dir: bool = False) -> Iterator[Row]:
    """Rows of a hub dataset: every requested subset and split, in order."""
    from lmforge.hub import use_hf_default

    hf = use_hf_default(use_hf)
    repo = (hf_id or ms_id or dataset_id) if hf else (ms_id or hf_id or dataset_id)
    hub = 'huggingface' if hf or (ms_id is None and hf_id is not None) else 'modelscope'
    for subset in subsets or [None]:
        for split in splits or ['train']:
            source = f'{repo}' + (f':{subset}' if subset else '') + (f'[{split}]' if split != 'train' else '')
            ds = _load_hub(repo, subset, split, hub, streaming, label or dataset_id, data_dir)
            for i, r in enumerate(ds, 1):
                data = dict(r)
                if transform is not None:
                    data = transform(data)
                    if data is None:
                        continue
                yield Row(data, source, i)


def _load_hub(repo: str, subset, split: str, hub: str, streaming: bool, label: str, data_dir: bool = False):
    where = f'--dataset {label} ({hub} {repo}' + (f', subset {subset}' if subset else '') + ')'
    if hub == 'modelscope':
        if hub_offline():
            raise DataError(f'{where}: offline mode is on (HF_HUB_OFFLINE=1) and ModelScope datasets are only read '
                            'online. Add --use_hf to read a copy in the local Hugging Face cache, or pass a local '
                            'jsonl/json/csv/parquet file or a save_to_disk folder.')
        try:
            from modelscope import MsDataset
        except ImportError:
            raise DataError(f'{where}: a ModelScope id, but modelscope is not installed: pip install modelscope, or '
                            'add --use_hf for the Hugging Face Hub') from None
        try:
            ds = MsDataset.load(repo, subset_name=subset or 'default', split=split, use_streaming=streaming)
            return ds.to_hf_dataset() if hasattr(ds, 'to_hf_dataset') and not streaming else ds
        except Exception as e:  # noqa: BLE001 - modelscope's errors have no common base
            raise DataError(f'{where}: loading from ModelScope failed ({type(e).__name__}: {str(e)[:200]}). Check '
                            'the id (`lmforge data list`), add --use_hf for the Hugging Face Hub, or pass a local '
                            'file.') from None
    import datasets

    try:
        if data_dir and subset:  # subsets that are folders of the repository, not configs
            return datasets.load_dataset(repo, data_dir=subset, split=split, streaming=streaming)
        return datasets.load_dataset(repo, subset, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001
        if hub_offline():
            why = 'offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local Hugging Face cache'
        else:
            why = f'{type(e).__name__}: {str(e)[:200]}'
        raise DataError(f'{where}: not a local file or directory, and loading it from the hub failed ({why}). '
                        'Pass a local jsonl/json/csv/parquet path or save_to_disk folder, or run once with network '
                        'access to fill the cache.') from None
