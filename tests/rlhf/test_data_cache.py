"""`lmforge rlhf` encodes each dataset once: its rows and data report are cached on disk per spec
(`lmforge.rlhf.data.encode_spec`, `lmforge.data.cache.save_records`), and a later build reads them back."""
import json
import math
import os

import pytest

from lmforge.args.parse import from_kwargs
from lmforge.args.rlhf import RlhfArgs
from lmforge.errors import DataError
from tests.conftest import chat_rows, write_jsonl
from tests.rlhf.helpers import letter_pairs, sum_prompts
from tests.rlhf.test_preference_rows import tokenizer_of

BAD_ROW = {'prompt': 'Last letter: abe', 'chosen': 'e'}  # no rejected answer
EXTRA = {'grpo': dict(reward_funcs=['accuracy'], num_generations=2, per_device_train_batch_size=2),
         'gkd': dict(teacher_model='unused')}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / 'cache'
    monkeypatch.setenv('LMFORGE_DATA_CACHE', str(path))
    return path


@pytest.fixture(scope='module')
def tok(qwen2_dir):
    return tokenizer_of(qwen2_dir)


def _build(tok, **kwargs):
    """(train, val, logged lines, the cache lines among them)."""
    from lmforge.rlhf.data import build_rlhf_datasets

    lines = []
    kwargs = {**EXTRA.get(kwargs.get('rlhf_type'), {}), **kwargs}
    train, val = build_rlhf_datasets(from_kwargs(RlhfArgs, model='unused', **kwargs), tok, log=lines.append)
    return train, val, lines, [line for line in lines if 'from the cache' in line]


def _entries(cache_dir) -> list[str]:
    return sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else []


def test_a_second_build_reads_the_cache_with_the_same_rows_and_report(tmp_path, cache_dir, tok):
    path = write_jsonl(tmp_path / 'pairs.jsonl', letter_pairs(30, seed=1)[:10] + [BAD_ROW]
                       + letter_pairs(30, seed=1)[10:])
    first, _, log1, hits1 = _build(tok, rlhf_type='dpo', dataset=[path])
    assert hits1 == [] and len(first) == 30
    assert f'    {path}:11: rejected: missing' in '\n'.join(log1)
    [key] = _entries(cache_dir)  # one complete entry, no temporary folder left behind
    entry = cache_dir / key
    assert sorted(os.listdir(entry)) == sorted(
        ['records.json', 'report.json'] + [f'{c}.{part}.npy' for c in ('prompt_ids', 'chosen_ids', 'rejected_ids')
                                            for part in ('ids', 'offsets')])

    again, _, log2, hits2 = _build(tok, rlhf_type='dpo', dataset=[path])
    assert hits2 == [f'{path}: 30 encoded rows from the cache ({entry})']
    assert again == first and all(type(v) is list for r in again for v in r.values())
    assert [line for line in log2 if line not in hits2] == log1  # the same data report, invalid row included
    assert _entries(cache_dir) == [key]
    # --strict is no part of the key: the cached report's first invalid row stops the run, as encoding would
    with pytest.raises(DataError, match=f'invalid row \\(--strict\\): {path}:11: rejected: missing'):
        _build(tok, rlhf_type='dpo', dataset=[path], strict=True)


@pytest.mark.parametrize('rlhf_type, rows', [
    ('kto', letter_pairs(12, seed=2)),
    ('grpo', sum_prompts() + [{'messages': [{'role': 'user', 'content': 'What is 1+1?'}], 'solution': '2',
                               'meta': {'level': 1, 'tags': ['sum', None], 'weight': 0.5}}]),
    ('gkd', chat_rows(12)),
])
def test_each_kind_of_row_comes_back_equal(tmp_path, cache_dir, tok, rlhf_type, rows):
    path = write_jsonl(tmp_path / 'd.jsonl', rows)
    first, _, log1, hits1 = _build(tok, rlhf_type=rlhf_type, dataset=[path])
    again, _, log2, hits2 = _build(tok, rlhf_type=rlhf_type, dataset=[path])
    assert hits1 == [] and len(hits2) == 1
    assert again == first and [list(r) for r in again] == [list(r) for r in first]  # columns in the same order
    assert [line for line in log2 if line not in hits2] == log1
    if rlhf_type == 'grpo':
        assert first[-1]['meta'] == {'level': 1, 'tags': ['sum', None], 'weight': 0.5}
    if rlhf_type == 'kto':
        assert {r['label'] for r in again} == {True, False}


def test_rows_json_cannot_hold_exactly_are_used_but_not_cached(tmp_path, cache_dir, tok):
    rows = [{**r, 'score': math.nan} for r in sum_prompts()]  # NaN != NaN: JSON would not give the row back
    path = write_jsonl(tmp_path / 'd.jsonl', rows)
    for _ in range(2):
        train, _, _, hits = _build(tok, rlhf_type='grpo', dataset=[path])
        assert hits == [] and len(train) == 4 and math.isnan(train[0]['score'])
    assert _entries(cache_dir) == []


def test_the_rlhf_type_and_every_encoding_option_make_their_own_entry(tmp_path, cache_dir, tok):
    path = write_jsonl(tmp_path / 'pairs.jsonl', letter_pairs(12, seed=3))
    dpo, _, _, _ = _build(tok, rlhf_type='dpo', dataset=[path])
    kto, _, _, hits = _build(tok, rlhf_type='kto', dataset=[path])
    assert hits == [] and len(kto) == 24 and 'completion_ids' in kto[0]
    for changed in (dict(rlhf_type='orpo'), dict(max_length=18), dict(truncation_strategy='left', max_length=18),
                    dict(system='Answer with one letter.'), dict(columns={'chosen': 'rejected', 'rejected': 'chosen'})):
        _, _, _, hits = _build(tok, **{'rlhf_type': 'dpo', 'dataset': [path], **changed})
        assert hits == [], changed
    assert len(_entries(cache_dir)) == 7
    again, _, _, hits = _build(tok, rlhf_type='dpo', dataset=[path])
    assert len(hits) == 1 and again == dpo
    short, _, _, hits = _build(tok, rlhf_type='dpo', dataset=[path], max_length=18)
    assert len(hits) == 1 and 0 < len(short) < len(dpo)  # max_length 18 deleted the longer rows (17 to 19 tokens)
    cut, _, _, hits = _build(tok, rlhf_type='dpo', dataset=[path], max_length=18, truncation_strategy='left')
    assert len(hits) == 1 and len(cut) == len(dpo) and cut != dpo  # ... or cut their prompts
    assert all(len(r['prompt_ids']) + len(r['chosen_ids']) <= 18 for r in cut)


def test_a_changed_file_misses(tmp_path, cache_dir, tok):
    path = tmp_path / 'pairs.jsonl'
    write_jsonl(path, letter_pairs(12, seed=4))
    before, _, _, _ = _build(tok, rlhf_type='dpo', dataset=[str(path)])
    write_jsonl(path, letter_pairs(12, seed=5)[:9])
    after, _, _, hits = _build(tok, rlhf_type='dpo', dataset=[str(path)])
    assert hits == [] and len(after) == 9 and after != before[:9]
    again, _, _, hits = _build(tok, rlhf_type='dpo', dataset=[str(path)])
    assert len(hits) == 1 and again == after


def test_load_from_cache_file_false_encodes_again_and_refreshes_the_entry(tmp_path, cache_dir, tok):
    path = write_jsonl(tmp_path / 'pairs.jsonl', letter_pairs(12, seed=6))
    _build(tok, rlhf_type='dpo', dataset=[path])
    [key] = _entries(cache_dir)
    report = cache_dir / key / 'report.json'
    raw = json.loads(report.read_text())
    report.write_text(json.dumps({**raw, 'invalid': ['planted:1: row: put there by the test']}))
    _, _, log, hits = _build(tok, rlhf_type='dpo', dataset=[path])
    assert len(hits) == 1 and '    planted:1: row: put there by the test' in log  # a hit reads the entry
    _, _, log, hits = _build(tok, rlhf_type='dpo', dataset=[path], load_from_cache_file=False)
    assert hits == [] and not any('planted' in line for line in log)
    _, _, log, hits = _build(tok, rlhf_type='dpo', dataset=[path])
    assert len(hits) == 1 and not any('planted' in line for line in log)  # the entry was written again
    assert _entries(cache_dir) == [key]


def test_a_damaged_entry_is_encoded_again(tmp_path, cache_dir, tok):
    path = write_jsonl(tmp_path / 'pairs.jsonl', letter_pairs(12, seed=7))
    first, _, _, _ = _build(tok, rlhf_type='dpo', dataset=[path])
    [key] = _entries(cache_dir)
    os.remove(cache_dir / key / 'chosen_ids.ids.npy')
    again, _, _, hits = _build(tok, rlhf_type='dpo', dataset=[path])
    assert hits == [] and again == first
    assert 'chosen_ids.ids.npy' in os.listdir(cache_dir / key)


def test_mixing_splitting_and_kto_order_are_those_of_the_encoded_rows(tmp_path, cache_dir, tok):
    a = write_jsonl(tmp_path / 'a.jsonl', letter_pairs(60, seed=1))
    b = write_jsonl(tmp_path / 'b.jsonl', [{**r, 'prompt': r['prompt'].replace('Last', 'First')}
                                           for r in letter_pairs(40, seed=2)])
    for kwargs in (dict(rlhf_type='dpo', interleave_prob=[0.7, 0.3], split_dataset_ratio=0.1),
                   dict(rlhf_type='dpo', stopping_strategy='all_exhausted', data_seed=3),
                   dict(rlhf_type='kto', val_dataset=[b])):
        dataset = [a] if 'val_dataset' in kwargs else [a, b]
        train, val, log, hits = _build(tok, dataset=dataset, load_from_cache_file=False, **kwargs)
        assert hits == []
        again, val_again, log_again, hits = _build(tok, dataset=dataset, **kwargs)
        assert len(hits) == 2, kwargs  # each spec on its own (train and validation specs alike)
        assert again == train and val_again == val, kwargs
        assert [line for line in log_again if line not in hits] == log
    assert sum('First' in tok.decode(s['prompt_ids']) for s in again) == 0 and len(val_again) == 80


def test_dataset_num_proc_encodes_the_same_rows(tmp_path, cache_dir, tok):
    rows = letter_pairs(1100, seed=8)
    path = write_jsonl(tmp_path / 'pairs.jsonl', rows[:700] + [BAD_ROW] + rows[700:])
    one, _, log1, _ = _build(tok, rlhf_type='kto', dataset=[path], load_from_cache_file=False)
    two, _, log2, hits = _build(tok, rlhf_type='kto', dataset=[path], load_from_cache_file=False, dataset_num_proc=2)
    assert hits == [] and two == one and log2 == log1 and f'    {path}:701: rejected: missing' in '\n'.join(log1)
    with pytest.raises(DataError, match=f'--strict.*{path}:701'):
        _build(tok, rlhf_type='kto', dataset=[path], load_from_cache_file=False, dataset_num_proc=2, strict=True)


def test_streaming_rows_are_not_cached(tmp_path, cache_dir, tok):
    path = write_jsonl(tmp_path / 'pairs.jsonl', letter_pairs(12, seed=9))
    stream, _, _, _ = _build(tok, rlhf_type='dpo', dataset=[path], streaming=True, max_steps=2)
    assert len(list(stream)) == 12 and _entries(cache_dir) == []
