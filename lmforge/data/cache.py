"""On-disk cache of encoded datasets, keyed by (data fingerprint, tokenizer, chat template, max_length, options).

The key changes whenever anything that could change the samples changes: the data (for local files: path, size and
modification time of every file; for hub and registry datasets: their ids, subsets, splits, column mapping and
transform), the tokenizer (its serialized vocabulary and merges, special tokens), the chat template, the encoding
options (mode, max_length, truncation strategy, loss scale, system prompt, columns, sampling seed) and lmforge's own
data and template code. A cached dataset is a folder holding the token ids and labels as flat int32 arrays plus
offsets (numpy ``.npy``, memory-mapped on load) and the data report; it is written to a temporary name and renamed
into place, so an interrupted run never leaves a half-written entry.

`lmforge rlhf` caches its encoded rows the same way (`save_records` / `load_records`): each token-id column as a
flat int32 array plus offsets, the other columns (KTO labels, GRPO prompt messages and reward columns) as JSON; its
keys add the rlhf type and `lmforge.rlhf.data`'s source (``code_files``).

Where: ``$LMFORGE_DATA_CACHE``, else ``$XDG_CACHE_HOME/lmforge/datasets`` (``~/.cache/lmforge/datasets``).
``--load_from_cache_file false`` re-encodes (and refreshes the entry).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile

CODE_FILES = ('data/formats.py', 'data/preference.py', 'data/dataset.py', 'data/readers.py', 'data/registry.py',
              'templates/encode.py', 'templates/render.py')


def cache_root() -> str:
    root = os.environ.get('LMFORGE_DATA_CACHE')
    if not root:
        base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
        root = os.path.join(base, 'lmforge', 'datasets')
    return root


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode('utf-8', 'surrogatepass'))
        h.update(b'\0')
    return h.hexdigest()


_CODE: dict = {}


def code_fingerprint(extra: tuple = ()) -> str:
    """The source of lmforge's data and template code (`CODE_FILES`), plus the files ``extra`` (paths relative to
    the lmforge package, e.g. ``('rlhf/data.py',)``)."""
    extra = tuple(extra)
    if extra not in _CODE:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        blobs = []
        for rel in CODE_FILES + extra:
            path = os.path.join(root, rel)
            if os.path.isfile(path):
                with open(path, 'rb') as f:
                    blobs.append(f.read())
        _CODE[extra] = _sha(*blobs)
    return _CODE[extra]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is not None:
        vocab = backend.to_str()
    else:
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = json.dumps(template, sort_keys=True)
    special = json.dumps(getattr(tokenizer, 'special_tokens_map', {}), sort_keys=True, default=str)
    return _sha(type(tokenizer).__name__, vocab, template, special, getattr(tokenizer, 'split_special_tokens', ''))


def data_fingerprint(spec: str, use_hf: bool | None) -> str | None:
    """What identifies the rows of one ``--dataset`` spec; None when it cannot be told without reading them."""
    from lmforge.data.readers import local_files, parse_spec

    s = parse_spec(spec)
    if s.is_local:
        files = local_files(s.path)
        if not files:
            return None
        stats = []
        for f in files:
            st = os.stat(f)
            stats.append((os.path.abspath(f), st.st_size, st.st_mtime_ns))
        return _sha('local', json.dumps(stats), s.subsets, s.n)
    from lmforge.data.registry import find_dataset
    from lmforge.hub import use_hf_default

    entry = find_dataset(s.path)
    ident = entry.fingerprint() if entry is not None else s.path
    return _sha('hub', ident, s.subsets, s.n, use_hf_default(use_hf))


def cache_key(spec: str, tokenizer, options: dict, use_hf: bool | None = None, code_files: tuple = ()
              ) -> str | None:
    data = data_fingerprint(spec, use_hf)
    if data is None:
        return None
    return _sha(data, tokenizer_fingerprint(tokenizer), json.dumps(options, sort_keys=True, default=str),
                code_fingerprint(tuple(code_files)))[:32]


def load(key: str):
    """``(TokenStore, report_dict)`` of a cached entry (its arrays memory-mapped: nothing is read until used), or
    None."""
    import numpy as np

    from lmforge.data.store import TokenStore

    path = os.path.join(cache_root(), key)
    try:
        with open(os.path.join(path, 'report.json'), encoding='utf-8') as f:
            report = json.load(f)
        ids = np.load(os.path.join(path, 'input_ids.npy'), mmap_mode='r')
        labels = np.load(os.path.join(path, 'labels.npy'), mmap_mode='r')
        offsets = np.load(os.path.join(path, 'offsets.npy'))
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if len(offsets) == 0 or int(offsets[-1]) != len(ids) or len(ids) != len(labels):
        return None
    return TokenStore(ids, labels, offsets), report


def save(key: str, samples, report) -> str | None:
    """Write an entry (``samples``: a `TokenStore` or a list of samples); a cache that cannot be written
    (read-only disk, ...) only costs the next run its encoding time."""
    import numpy as np

    from lmforge.data.store import TokenStore

    def fill(tmp: str) -> None:
        if isinstance(samples, TokenStore):
            flat_ids = np.asarray(samples.ids, dtype=np.int32)
            flat_labels = np.asarray(samples.labels, dtype=np.int32)
            offsets = np.asarray(samples.offsets, dtype=np.int64)
        else:
            lengths = np.fromiter((len(s['input_ids']) for s in samples), dtype=np.int64, count=len(samples))
            offsets = np.zeros(len(samples) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            chain = itertools.chain.from_iterable
            flat_ids = np.fromiter(chain(s['input_ids'] for s in samples), dtype=np.int32, count=int(offsets[-1]))
            flat_labels = np.fromiter(chain(s['labels'] for s in samples), dtype=np.int32, count=int(offsets[-1]))
        np.save(os.path.join(tmp, 'input_ids.npy'), flat_ids)
        np.save(os.path.join(tmp, 'labels.npy'), flat_labels)
        np.save(os.path.join(tmp, 'offsets.npy'), offsets)
        _write_report(tmp, report)

    return _write_entry(key, fill)


def _write_report(folder: str, report) -> None:
    with open(os.path.join(folder, 'report.json'), 'w', encoding='utf-8') as f:
        json.dump(dataclasses.asdict(report) if dataclasses.is_dataclass(report) else report, f)


def _write_entry(key: str, fill) -> str | None:
    """``fill(folder)`` writes the entry into a temporary folder, renamed to ``key`` once complete (replacing an
    older entry); None when the cache cannot be written."""
    root = cache_root()
    final = os.path.join(root, key)
    tmp = None
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f'.{key}.', dir=root)
        fill(tmp)
        if os.path.isdir(final):
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final
    except OSError:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return None


# --------------------------------------------------------------------------- rows of several columns (lmforge rlhf)

RECORDS = 'records.json'


def _int_lists(values: list) -> bool:
    return all(type(v) is list and all(type(t) is int for t in v) for v in values)


def save_records(key: str, rows: list[dict], report, id_columns: tuple) -> str | None:
    """Write an entry of rows (dicts, such as `lmforge.rlhf.data`'s): each of ``id_columns`` (a list of ints in
    every row) as a flat int32 array plus offsets, the rows' other columns as JSON (the id columns stand there as
    null placeholders, which keeps each row's column order). None, and nothing written, when the rows cannot be
    stored exactly (an id column that is not a list of int32 values in some row, other columns that JSON would
    change: tuples, non-string keys, NaN, objects) or when the cache cannot be written."""
    import numpy as np

    id_columns = tuple(id_columns)
    arrays = {}
    try:
        for c in id_columns:
            values = [r[c] for r in rows]
            if not _int_lists(values):
                return None
            offsets = np.zeros(len(values) + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=len(values)), out=offsets[1:])
            flat = np.fromiter(itertools.chain.from_iterable(values), dtype=np.int32, count=int(offsets[-1]))
            arrays[c] = flat, offsets
        rest = None
        if any(len(r) != len(id_columns) for r in rows):
            others = [{k: None if k in id_columns else v for k, v in r.items()} for r in rows]
            rest = json.dumps(others, ensure_ascii=False, allow_nan=False)
            if json.loads(rest) != others:
                return None
    except (KeyError, TypeError, ValueError, OverflowError):
        return None

    def fill(tmp: str) -> None:
        for c, (flat, offsets) in arrays.items():
            np.save(os.path.join(tmp, f'{c}.ids.npy'), flat)
            np.save(os.path.join(tmp, f'{c}.offsets.npy'), offsets)
        if rest is not None:
            with open(os.path.join(tmp, 'rows.json'), 'w', encoding='utf-8') as f:
                f.write(rest)
        _write_report(tmp, report)
        with open(os.path.join(tmp, RECORDS), 'w', encoding='utf-8') as f:
            json.dump({'rows': len(rows), 'id_columns': list(id_columns), 'other_columns': rest is not None}, f)

    return _write_entry(key, fill)


def load_records(key: str):
    """``(rows, report_dict)`` of an entry written by `save_records` (the rows as lists of dicts of lists, equal to
    those saved), or None."""
    import gc

    import numpy as np

    path = os.path.join(cache_root(), key)
    was = gc.isenabled()
    gc.disable()  # millions of new lists and no cycles: the collector would only walk them again and again
    try:
        with open(os.path.join(path, RECORDS), encoding='utf-8') as f:
            meta = json.load(f)
        with open(os.path.join(path, 'report.json'), encoding='utf-8') as f:
            report = json.load(f)
        n = meta['rows']
        columns = {}
        for c in meta['id_columns']:
            flat = np.load(os.path.join(path, f'{c}.ids.npy'))
            offsets = np.load(os.path.join(path, f'{c}.offsets.npy'))
            if len(offsets) != n + 1 or int(offsets[-1]) != len(flat):
                return None
            flat, offsets = flat.tolist(), offsets.tolist()
            columns[c] = [flat[offsets[i]:offsets[i + 1]] for i in range(n)]
        if meta['other_columns']:
            with open(os.path.join(path, 'rows.json'), encoding='utf-8') as f:
                rows = json.load(f)
            if len(rows) != n:
                return None
            for c, values in columns.items():
                for row, v in zip(rows, values):
                    row[c] = v
        else:
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else []
    except (OSError, ValueError, KeyError, TypeError):  # json.JSONDecodeError is a ValueError
        return None
    finally:
        if was:
            gc.enable()
    return rows, report
