"""Every file kind and every row format, on small files written here; --columns; spec syntax; hub errors offline."""
import csv
import json

import pytest

from lmforge.data import detect_format, normalize, read_dataset
from lmforge.data.readers import parse_spec
from lmforge.errors import DataError

QA = [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}]
ROWS = [{'query': 'hi', 'response': 'yo'}, {'query': 'how', 'response': 'fine'}, {'query': 'and', 'response': 'so'}]


def _write(tmp_path, kind):
    """ROWS written as a ``kind`` file (or folder); returns the path."""
    path = tmp_path / f'data.{kind}'
    if kind == 'jsonl':
        path.write_text(''.join(json.dumps(r) + '\n' for r in ROWS))
    elif kind == 'json':
        path.write_text(json.dumps(ROWS))
    elif kind == 'json-object':
        path = tmp_path / 'wrapped.json'
        path.write_text(json.dumps({'version': 1, 'data': ROWS}))
    elif kind == 'json-lines':
        path = tmp_path / 'lines.json'
        path.write_text(''.join(json.dumps(r) + '\n' for r in ROWS))
    elif kind == 'csv':
        with open(path, 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=['query', 'response'])
            w.writeheader()
            w.writerows(ROWS)
    elif kind == 'parquet':
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif kind in ('arrow', 'save_to_disk', 'dataset_dict'):
        import datasets
        ds = datasets.Dataset.from_list(ROWS)
        folder = tmp_path / 'saved'
        (datasets.DatasetDict({'train': ds}) if kind == 'dataset_dict' else ds).save_to_disk(str(folder))
        if kind != 'arrow':
            return str(folder)
        path = next(folder.rglob('*.arrow'))
    elif kind == 'dir':
        folder = tmp_path / 'folder'
        (folder / 'sub').mkdir(parents=True)
        (folder / 'a.jsonl').write_text(json.dumps(ROWS[0]) + '\n')
        (folder / 'sub' / 'b.json').write_text(json.dumps(ROWS[1:]))
        (folder / 'notes.md').write_text('ignored')
        return str(folder)
    return str(path)


@pytest.mark.parametrize('kind', ['jsonl', 'json', 'json-object', 'json-lines', 'csv', 'parquet', 'arrow',
                                  'save_to_disk', 'dataset_dict', 'dir'])
def test_every_file_kind_reads_the_same_rows(tmp_path, kind):
    rows = read_dataset(_write(tmp_path, kind))
    assert [r.data for r in rows] == ROWS
    assert [r.index for r in rows][:1] == [1]
    assert [normalize(r.data)['messages'][-1]['content'] for r in rows] == ['yo', 'fine', 'so']


def test_streaming_reads_every_kind_the_same(tmp_path):
    from lmforge.data import iter_dataset
    for kind in ('jsonl', 'csv', 'parquet', 'arrow', 'save_to_disk', 'dir'):
        folder = tmp_path / kind
        folder.mkdir()
        assert [r.data for r in iter_dataset(_write(folder, kind))] == ROWS, kind


def test_txt_is_plain_text_for_pt(tmp_path):
    path = tmp_path / 'corpus.txt'
    path.write_text('first line\n\nsecond line\n')
    rows = read_dataset(str(path))
    assert [(r.data, r.index) for r in rows] == [({'text': 'first line'}, 1), ({'text': 'second line'}, 3)]
    assert normalize(rows[0].data, 'pt') == {'text': 'first line'}


@pytest.mark.parametrize('row, fmt', [
    ({'messages': QA}, 'messages'),
    ({'conversation': QA}, 'messages'),
    ({'conversations': [{'from': 'human', 'value': 'hi'}, {'from': 'gpt', 'value': 'yo'}]}, 'sharegpt'),
    ({'messages': [{'from': 'user', 'value': 'hi'}, {'from': 'assistant', 'value': 'yo'}]}, 'sharegpt'),
    ({'instruction': 'hi', 'input': '', 'output': 'yo'}, 'alpaca'),
    ({'query': 'hi', 'response': 'yo'}, 'query-response'),
    ({'prompt': 'hi', 'completion': 'yo'}, 'query-response'),
    ({'question': 'hi', 'answer': 'yo'}, 'query-response'),
    ({'problem': 'hi', 'solution': 'yo'}, 'query-response'),
    ({'input': 'hi', 'output': 'yo'}, 'query-response'),
    ({'prompt': 'hi', 'target': 'yo'}, 'query-response'),
])
def test_formats_and_aliases_normalise_to_messages(row, fmt):
    assert detect_format(row) == fmt
    assert normalize(row)['messages'] == QA


def test_sharegpt_roles_system_and_tools_map():
    row = {'conversations': [{'from': 'system', 'value': 'S'}, {'from': 'human', 'value': 'weather?'},
                             {'from': 'function_call', 'value': '{"name": "w"}'},
                             {'from': 'observation', 'value': 'sunny'}, {'from': 'gpt', 'value': 'Sunny.'}],
           'tools': '[{"type": "function", "function": {"name": "w"}}]'}
    out = normalize(row)
    assert [m['role'] for m in out['messages']] == ['system', 'user', 'assistant', 'tool', 'assistant']
    assert out['tools'] == [{'type': 'function', 'function': {'name': 'w'}}]


def test_alpaca_with_system_and_history():
    out = normalize({'instruction': 'Translate', 'input': 'chat', 'output': 'cat', 'system': 'S',
                     'history': [['a', 'b']]})['messages']
    assert out == [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'a'},
                   {'role': 'assistant', 'content': 'b'}, {'role': 'user', 'content': 'Translate\nchat'},
                   {'role': 'assistant', 'content': 'cat'}]
    qr = normalize({'query': 'q2', 'response': 'r2', 'history': '[["q1", "r1"]]', 'system_prompt': 'S'})
    assert [m['content'] for m in qr['messages']] == ['S', 'q1', 'r1', 'q2', 'r2']


@pytest.mark.parametrize('row', [
    {'prompt': 'hi', 'chosen': 'yo', 'rejected': 'no'},                                       # TRL explicit prompt
    {'chosen': QA, 'rejected': [QA[0], {'role': 'assistant', 'content': 'no'}]},               # TRL implicit prompt
    {'messages': QA, 'rejected_response': 'no'},                                               # ms-swift
    {'query': 'hi', 'response': 'yo', 'rejected_response': 'no'},                              # ms-swift, query form
    {'question': 'hi', 'chosen': 'yo', 'rejected': 'no'},                                      # Intel/orca_dpo_pairs
])
def test_preference_rows_keep_the_rejected_answer_and_sft_trains_the_chosen(row):
    assert detect_format(row) == 'preference'
    out = normalize(row)
    assert out['messages'] == QA
    assert out['rejected_messages'] == [QA[0], {'role': 'assistant', 'content': 'no'}]


def test_kto_rows_carry_their_label():
    row = {'prompt': 'hi', 'completion': 'yo', 'label': True}
    assert detect_format(row) == 'kto'
    assert normalize(row) == {'messages': QA, 'label': True}
    assert normalize({'messages': QA, 'label': 1})['label'] is True


def test_columns_override_and_media(tmp_path):
    from lmforge.data.formats import rename_columns
    (tmp_path / 'cat.png').write_bytes(b'png')
    row = rename_columns({'src': 'hi', 'dst': '<image>yo', 'pic': 'cat.png'},
                         {'src': 'query', 'dst': 'response', 'pic': 'images'})
    out = normalize(row, base_dir=str(tmp_path))
    assert out['messages'][1]['content'] == '<image>yo' and out['images'] == [str(tmp_path / 'cat.png')]


def test_columns_flag_in_encoding(tmp_path, tokenizer):
    from lmforge.data import encode_rows
    path = tmp_path / 'd.jsonl'
    path.write_text(json.dumps({'ask': 'Last letter: abc', 'say': 'c'}) + '\n')
    samples, report = encode_rows(read_dataset(str(path)), tokenizer, 'sft', 64, 'delete',
                                  columns={'ask': 'query', 'say': 'response'})
    assert len(samples) == 1 and not report.invalid and report.formats == {'query-response': 1}


def test_spec_syntax():
    s = parse_spec('AI-ModelScope/alpaca-gpt4-data-en:default/other#100')
    assert (s.path, s.subsets, s.n) == ('AI-ModelScope/alpaca-gpt4-data-en', ['default', 'other'], 100)
    assert (parse_spec('data.jsonl#5').path, parse_spec('data.jsonl#5').n) == ('data.jsonl', 5)
    with pytest.raises(DataError, match='row count'):
        parse_spec('data.jsonl#many')


def test_sampling_is_seeded_and_repeats_past_the_end(tmp_path):
    path = _write(tmp_path, 'jsonl')
    assert len(read_dataset(path + '#2')) == 2 and len(read_dataset(path + '#7')) == 7
    assert [r.data for r in read_dataset(path + '#2', seed=3)] == [r.data for r in read_dataset(path + '#2', seed=3)]


@pytest.mark.parametrize('spec, use_hf, phrases', [
    ('some-org/some-dataset', True, ['huggingface some-org/some-dataset', 'offline mode is on']),
    ('some-org/some-dataset:sub#10', False, ['modelscope some-org/some-dataset, subset sub', 'offline mode',
                                             '--use_hf']),
    ('alpaca-gpt4-en#5', True, ['alpaca-gpt4-en (huggingface vicgalle/alpaca-gpt4)', 'not in the local']),
    ('missing/file.jsonl', None, ['file not found']),
])
def test_hub_ids_offline_fail_clearly(spec, use_hf, phrases, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    with pytest.raises(DataError) as e:
        read_dataset(spec, use_hf=use_hf)
    for p in phrases:
        assert p in str(e.value)


def test_registry_subset_is_checked():
    with pytest.raises(DataError, match="no subset 'helpful-bas'.*Did you mean 'helpful-base'"):
        read_dataset('hh-rlhf:helpful-bas')
