"""`TokenStore`: encoded samples held compactly.

Every sample's ``input_ids`` and ``labels`` live in two flat int32 arrays with an offset per sample (4 bytes a token
instead of ~36 for Python lists of ints, and no per-sample objects for the garbage collector to walk); packed rows
also keep ``position_ids``. Indexing gives the usual ``{'input_ids': [...], 'labels': [...]}`` dict of lists, so a
store is a map-style dataset for the Trainer and works wherever a list of samples does (len, indexing, iteration,
equality). The arrays are `array.array` while a store is built and may be numpy arrays (memory-mapped from the data
cache) once loaded.
"""
from __future__ import annotations

from array import array


def _as_bytes(values, code: str) -> bytes:
    if isinstance(values, array):
        return values.tobytes() if values.typecode == code else array(code, values).tobytes()
    import numpy as np
    return np.ascontiguousarray(values, dtype=np.int32 if code == 'i' else np.int64).tobytes()


class TokenStore:
    def __init__(self, ids=None, labels=None, offsets=None, position_ids=None):
        self.ids = ids if ids is not None else array('i')
        self.labels = labels if labels is not None else array('i')
        self.offsets = offsets if offsets is not None else array('q', [0])
        self.position_ids = position_ids

    # ---- building
    def append(self, sample: dict) -> None:
        if self.position_ids is None and 'position_ids' in sample and len(self) == 0:
            self.position_ids = array('i')
        for column, values in ((self.ids, sample['input_ids']), (self.labels, sample['labels'])):
            if type(values) is list:
                column.fromlist(values)  # about twice as fast as extend
            else:
                column.extend(values)
        if self.position_ids is not None:
            self.position_ids.extend(sample.get('position_ids') or range(len(sample['input_ids'])))
        self.offsets.append(len(self.ids))

    def concat(self, other: 'TokenStore') -> 'TokenStore':
        """A new store: this one's samples, then ``other``'s (stores of unpacked samples)."""
        if self.position_ids is not None or other.position_ids is not None:
            raise ValueError('concat joins unpacked stores; pack after joining')
        out = TokenStore()
        for store in (self, other):
            shift = len(out.ids)
            out.ids.frombytes(_as_bytes(store.ids, 'i'))
            out.labels.frombytes(_as_bytes(store.labels, 'i'))
            out.offsets.extend(int(o) + shift for o in store.offsets[1:])
        return out

    def select(self, indices) -> 'TokenStore':
        """A new store with the samples at ``indices``, in that order."""
        out = TokenStore(position_ids=array('i') if self.position_ids is not None else None)
        ids, labels = self.ids, self.labels
        for i in indices:
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            out.ids.frombytes(_as_bytes(ids[a:b], 'i'))
            out.labels.frombytes(_as_bytes(labels[a:b], 'i'))
            if self.position_ids is not None:
                out.position_ids.frombytes(_as_bytes(self.position_ids[a:b], 'i'))
            out.offsets.append(len(out.ids))
        return out

    # ---- reading
    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1]) - int(self.offsets[i])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f'sample {i} of {n}')
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out = {'input_ids': self.ids[a:b].tolist(), 'labels': self.labels[a:b].tolist()}
        if self.position_ids is not None:
            out['position_ids'] = self.position_ids[a:b].tolist()
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        if isinstance(other, (TokenStore, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f'TokenStore({len(self)} samples, {len(self.ids)} tokens)'

    @property
    def num_tokens(self) -> int:
        return len(self.ids)
