"""--streaming: a 1M-row file is read lazily with bounded memory; the shuffle buffer is seeded; --max_steps is
required; a short streaming (and packed) training run works end to end."""
import itertools
import json
import random

import pytest

from lmforge.data.streaming import StreamingDataset, pack_stream, shuffle_buffer
from lmforge.errors import ArgumentError, DataError
from tests.conftest import write_jsonl


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


@pytest.fixture(scope='module')
def million_rows(tmp_path_factory):
    """1,000,000 chat rows (~45 MB) written in blocks of 1000 distinct lines."""
    rng = random.Random(0)
    block = []
    for _ in range(1000):
        word = ''.join(rng.choice('abcdefgh') for _ in range(rng.randint(3, 5)))
        block.append(json.dumps({'query': f'Last letter: {word}', 'response': word[-1]}) + '\n')
    block = ''.join(block)
    path = tmp_path_factory.mktemp('stream') / 'million.jsonl'
    with open(path, 'w') as f:
        for _ in range(1000):
            f.write(block)
    return str(path)


def test_a_million_rows_stream_with_bounded_memory(million_rows, tokenizer):
    ds = StreamingDataset([million_rows], tokenizer, 'sft', max_length=64, truncation_strategy='delete',
                          buffer_size=200, seed=0)
    before = _rss_mb()
    got = list(itertools.islice(iter(ds), 500))
    grown = _rss_mb() - before
    assert len(got) == 500 and all(s['input_ids'] and len(s['input_ids']) <= 64 for s in got)
    assert ds.report.rows <= 500 + 200  # only the buffer was read ahead, not the file
    assert grown < 40, f'memory grew by {grown:.0f} MB while streaming 500 of 1M rows'
    packed = StreamingDataset([million_rows], tokenizer, 'sft', max_length=64, truncation_strategy='delete',
                              buffer_size=200, packing=True)
    rows = list(itertools.islice(iter(packed), 20))
    assert all(len(r['input_ids']) <= 64 and r['position_ids'].count(0) >= 2 for r in rows)


def test_shuffle_buffer_is_seeded_and_a_permutation():
    items = list(range(1000))
    a = list(shuffle_buffer(iter(items), 50, random.Random(1)))
    assert sorted(a) == items and a != items
    assert a == list(shuffle_buffer(iter(items), 50, random.Random(1)))
    assert a != list(shuffle_buffer(iter(items), 50, random.Random(2)))
    assert max(i - a.index(i) for i in items) <= 50  # nothing moves earlier than the buffer allows


def test_pack_stream_keeps_every_sample():
    samples = [{'input_ids': [1] * n, 'labels': [1] * n} for n in (5, 30, 12, 40, 7, 60, 3)]
    packed = list(pack_stream(iter(samples), 64, open_bins=2))
    assert sum(len(p['input_ids']) for p in packed) == sum(len(s['input_ids']) for s in samples)
    assert all(len(p['input_ids']) <= 64 for p in packed)


def test_streaming_needs_max_steps_and_a_val_dataset(tmp_path):
    from lmforge.args import SftArgs, from_kwargs
    with pytest.raises(ArgumentError, match='--max_steps: is required with --streaming'):
        from_kwargs(SftArgs, model='m', dataset=['d.jsonl'], streaming=True)
    with pytest.raises(ArgumentError, match='--split_dataset_ratio: cannot hold rows out of a stream'):
        from_kwargs(SftArgs, model='m', dataset=['d.jsonl'], streaming=True, max_steps=5, split_dataset_ratio=0.1)


def test_an_unusable_stream_fails_before_the_model_loads(tmp_path, tokenizer):
    from lmforge.args import SftArgs, from_kwargs
    from lmforge.data import build_datasets
    path = write_jsonl(tmp_path / 'bad.jsonl', [{'foo': 1}] * 5)
    args = from_kwargs(SftArgs, model='unused', dataset=[path], streaming=True, max_steps=3)
    with pytest.raises(DataError, match=f'no usable training samples in the first 5 rows.*{path}:1: row: '
                                        'unrecognised format'):
        build_datasets(args, tokenizer, 'sft', log=lambda m: None)


def test_streaming_training_runs(tmp_path, qwen2_dir):
    from lmforge import sft
    from tests.conftest import chat_rows
    path = write_jsonl(tmp_path / 'd.jsonl', chat_rows(40) + [{'broken': True}])
    out = sft(model=qwen2_dir, dataset=[path], streaming=True, packing=True, max_steps=3, max_length=64,
              shuffle_buffer_size=16, tuner_type='full', per_device_train_batch_size=2, gradient_checkpointing=False,
              report_to=['none'], save_steps=1000, output_dir=str(tmp_path / 'out'), logging_steps=1)
    assert out['global_step'] == 3 and out['train_loss'] > 0
