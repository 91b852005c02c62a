"""The dataset registry file (no network): every entry well-formed; `lmforge data list`; register_dataset and
--custom_dataset_info in ms-swift and LLaMA-Factory formats; the built-in row transforms."""
import json

import pytest

from lmforge.data import normalize, read_dataset, register_dataset
from lmforge.data.registry import (PREPROCESSORS, check_entry, find_dataset, list_datasets, load_custom_dataset_info,
                                   registry_rows, unregister_dataset)
from lmforge.errors import DataError


def test_every_registry_entry_is_well_formed():
    rows = registry_rows()
    assert len(rows) >= 150
    problems = {r.get('name'): check_entry(r) for r in rows}
    assert {k: v for k, v in problems.items() if v} == {}
    names = [r['name'] for r in rows]
    assert len(names) == len(set(names)), 'duplicate names'
    ids = [(r.get('hf'), r.get('ms'), json.dumps(r.get('subsets')), json.dumps(r.get('split')),
            json.dumps(r.get('columns'))) for r in rows]
    assert len(ids) == len(set(ids)), 'two entries for the same data'
    assert sum(1 for r in rows if r.get('hf')) >= 150 and sum(1 for r in rows if r.get('ms')) >= 100
    for r in rows:
        assert r.get('tags'), r['name']
        for s in r.get('subsets', []):
            if isinstance(s, dict):
                assert set(s) <= {'name', 'columns'}, r['name']


def test_the_registry_covers_the_kinds_of_data():
    tags = {t for e in list_datasets() for t in e.tags}
    for tag in ('chat', 'math', 'code', 'preference', 'kto', 'eval', 'multimodal', 'pretrain', 'agent', 'zh', 'en'):
        assert tag in tags
        assert list_datasets(tag)
    for name in ('alpaca-gpt4-en', 'alpaca-gpt4-zh', 'sharegpt', 'ultrachat-200k', 'openhermes-2.5', 'slimorca',
                 'belle-2m', 'firefly-1.1m', 'codealpaca-20k', 'gsm8k', 'math-lighteval', 'metamathqa', 'hh-rlhf',
                 'ultrafeedback-binarized', 'orca-dpo-pairs', 'kto-mix-14k', 'ceval', 'mmlu', 'cmmlu',
                 'coco-2014-caption', 'llava-instruct-150k', 'sharegpt4v', 'latex-ocr-print', 'refcoco'):
        assert find_dataset(name) is not None, name
    assert find_dataset('vicgalle/alpaca-gpt4').name == 'alpaca-gpt4-en'  # hub ids find their entry
    assert find_dataset('AI-ModelScope/alpaca-gpt4-data-en').name == 'alpaca-gpt4-en'


def test_data_list_and_info(capsys):
    from lmforge.cli import main
    assert main(['data', 'list', '--tag', 'kto']) == 0
    out = capsys.readouterr().out
    assert 'kto-mix-14k' in out and 'hf:trl-lib/kto-mix-14k' in out and 'alpaca' not in out
    assert main(['data', 'list']) == 0
    assert f'{len(registry_rows())} datasets' in capsys.readouterr().out
    assert main(['data', 'list', '--tag', 'no-such-tag']) == 2
    assert 'no dataset has the tag' in capsys.readouterr().err
    assert main(['data', 'info', 'gsm8k']) == 0
    assert json.loads(capsys.readouterr().out)['hf'] == 'openai/gsm8k'


def test_register_dataset_with_columns_and_preprocess(tmp_path):
    path = tmp_path / 'raw.jsonl'
    path.write_text(json.dumps({'ask': 'Hi', 'say': 'yo', 'skip': False}) + '\n' +
                    json.dumps({'ask': 'x', 'say': 'y', 'skip': True}) + '\n')

    def shout(row):
        return None if row['skip'] else {**row, 'response': row['response'].upper()}

    try:
        register_dataset('my-data', dataset_path=str(path), columns={'ask': 'query', 'say': 'response'},
                          preprocess=shout, tags=['mine'])
        rows = read_dataset('my-data')
        assert len(rows) == 1 and normalize(rows[0].data)['messages'][1]['content'] == 'YO'
        assert [e.name for e in list_datasets('mine')] == ['my-data']
        with pytest.raises(DataError, match='already registered'):
            register_dataset('my-data', dataset_path=str(path))
        with pytest.raises(DataError, match='needs an hf or ms id'):
            register_dataset('other')
    finally:
        unregister_dataset('my-data')


def test_custom_dataset_info_swift_and_llamafactory_formats(tmp_path):
    (tmp_path / 'a.jsonl').write_text(json.dumps({'q': 'Hi', 'a': 'yo'}) + '\n')
    (tmp_path / 'b.json').write_text(json.dumps([{'instruction': 'Hi', 'output': 'yo', 'sys': 'S'}]))
    swift = tmp_path / 'swift.json'
    swift.write_text(json.dumps([{'dataset_path': 'a.jsonl', 'dataset_name': 'swift-local',
                                  'columns': {'q': 'query', 'a': 'response'}},
                                 {'ms_dataset_id': 'some-org/some-data', 'subsets': ['x'], 'tags': ['t']}]))
    lf = tmp_path / 'dataset_info.json'
    lf.write_text(json.dumps({'lf_local': {'file_name': 'b.json', 'columns': {'prompt': 'instruction',
                                                                              'response': 'output',
                                                                              'system': 'sys'}},
                              'lf_hub': {'hf_hub_url': 'org/data', 'split': 'validation'}}))
    try:
        added = load_custom_dataset_info(str(swift)) + load_custom_dataset_info(str(lf))
        assert [e.name for e in added] == ['swift-local', 'some-org--some-data', 'lf_local', 'lf_hub']
        assert normalize(read_dataset('swift-local')[0].data)['messages'][1]['content'] == 'yo'
        assert normalize(read_dataset('lf_local')[0].data)['messages'][0] == {'role': 'system', 'content': 'S'}
        assert find_dataset('some-org/some-data').subsets == ['x']
        assert find_dataset('lf_hub').split == ['validation'] and find_dataset('lf_hub').hf == 'org/data'
    finally:
        for name in ('swift-local', 'some-org--some-data', 'lf_local', 'lf_hub'):
            unregister_dataset(name)
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps([{'dataset_name': 'x', 'subsets': 'notalist', 'hf_dataset_id': 'a/b'}]))
    with pytest.raises(DataError, match='subsets: expected a list'):
        load_custom_dataset_info(str(bad))


def test_custom_dataset_info_flag_in_training(tmp_path, tokenizer):
    from lmforge.args import SftArgs, from_kwargs
    from lmforge.data import build_datasets
    (tmp_path / 'a.jsonl').write_text(json.dumps({'q': 'Last letter: abc', 'a': 'c'}) + '\n')
    info = tmp_path / 'info.json'
    info.write_text(json.dumps([{'dataset_path': 'a.jsonl', 'dataset_name': 'letters', 'columns': {
        'q': 'query', 'a': 'response'}}]))
    try:
        args = from_kwargs(SftArgs, model='unused', dataset=['letters'], custom_dataset_info=[str(info)],
                           load_from_cache_file=False)
        train, _ = build_datasets(args, tokenizer, 'sft', log=lambda m: None)
        assert len(train) == 1
    finally:
        unregister_dataset('letters')


def test_builtin_transforms():
    hh = PREPROCESSORS['hh_rlhf']({'chosen': '\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Bye!',
                                   'rejected': '\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: No.'})
    out = normalize(hh)
    assert [m['role'] for m in out['messages']] == ['user', 'assistant', 'user', 'assistant']
    assert out['rejected_messages'][-1]['content'] == 'No.'
    mc = PREPROCESSORS['multiple_choice']
    mmlu = mc({'question': '2+2?', 'subject': 'math', 'choices': ['3', '4'], 'answer': 1})
    assert mmlu == {'query': '2+2?\nA. 3\nB. 4\nAnswer:', 'response': 'B'}
    ceval = mc({'id': 0, 'question': 'Q', 'A': 'a', 'B': 'b', 'C': 'c', 'D': 'd', 'answer': 'C'})
    assert ceval['response'] == 'C' and 'D. d' in ceval['query']
    arc = mc({'question': 'Q', 'choices': {'text': ['x', 'y'], 'label': ['A', 'B']}, 'answerKey': 'A'})
    assert arc['response'] == 'A' and 'B. y' in arc['query']
