"""On-disk cache of encoded datasets, keyed by (data fingerprint, tokenizer, chat template, max_length, options).

The key changes whenever anything that could change the samples changes: the data (for local files: path, size and
modification time of every file; for hub and registry datasets: their ids, subsets, splits, column mapping and
transform), the tokenizer (its serialized vocabulary and merges, special tokens), the chat template, the encoding
options (mode, max_length, truncation strategy, loss scale, system prompt, columns, sampling seed) and lmforge's own
data and template code. A cached dataset is a folder holding the token ids and labels as flat int32 arrays plus
offsets (numpy ``.npy``, memory-mapped on load) and the data report; it is written to a temporary name and renamed
into place, so an interrupted run never leaves a half-written entry.

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


_CODE: str | None = None


def code_fingerprint() -> str:
    global _CODE
    if _CODE is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        blobs = []
        for rel in CODE_FILES:
            path = os.path.join(root, rel)
            if os.path.isfile(path):
                with open(path, 'rb') as f:
                    blobs.append(f.read())
        _CODE = _sha(*blobs)
    return _CODE


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


def cache_key(spec: str, tokenizer, options: dict, use_hf: bool | None = None) -> str | None:
    data = data_fingerprint(spec, use_hf)
    if data is None:
        return None
    return _sha(data, tokenizer_fingerprint(tokenizer), json.dumps(options, sort_keys=True, default=str),
                code_fingerprint())[:32]


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

    root = cache_root()
    final = os.path.join(root, key)
    tmp = None
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f'.{key}.', dir=root)
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
        with open(os.path.join(tmp, 'report.json'), 'w', encoding='utf-8') as f:
            json.dump(dataclasses.asdict(report) if dataclasses.is_dataclass(report) else report, f)
        if os.path.isdir(final):
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final
    except OSError:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return None
