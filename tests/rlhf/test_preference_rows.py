"""Preference, KTO and prompt rows: every accepted format normalises to the same thing, encodes through the chat
template exactly as SFT labels answers, and every bad row is reported as file:row: field: problem."""
import pytest

from lmforge.data.formats import RowError
from lmforge.data.preference import normalize_kto, normalize_pair, normalize_preference, normalize_prompt
from tests.conftest import write_jsonl

USER = {'role': 'user', 'content': 'Last letter: abc'}
WANT = {'prompt': [USER], 'chosen': {'role': 'assistant', 'content': 'c'},
        'rejected': {'role': 'assistant', 'content': 'h'}}


@pytest.mark.parametrize('row', [
    {'prompt': 'Last letter: abc', 'chosen': 'c', 'rejected': 'h'},                                # TRL, text
    {'prompt': [USER], 'chosen': [{'role': 'assistant', 'content': 'c'}],
     'rejected': [{'role': 'assistant', 'content': 'h'}]},                                        # TRL, messages
    {'chosen': [USER, {'role': 'assistant', 'content': 'c'}],
     'rejected': [USER, {'role': 'assistant', 'content': 'h'}]},                                  # implicit prompt
    {'messages': [USER, {'role': 'assistant', 'content': 'c'}], 'rejected_response': 'h'},       # ms-swift
    {'conversations': [{'from': 'human', 'value': 'Last letter: abc'}, {'from': 'gpt', 'value': 'c'}],
     'rejected_response': 'h'},                                                                   # ShareGPT
    {'query': 'Last letter: abc', 'response': 'c', 'rejected_response': 'h'},                    # ms-swift q/r
    {'messages': [USER, {'role': 'assistant', 'content': 'c'}],
     'rejected_messages': [USER, {'role': 'assistant', 'content': 'h'}]},
])
def test_pair_formats_normalise_alike(row):
    assert normalize_pair(row) == WANT


def test_system_history_and_kto_rows():
    item = normalize_pair({'system': 'Be brief.', 'query': 'Last letter: abc', 'history': [['hi', 'hello']],
                           'response': 'c', 'rejected_response': 'h'})
    assert [m['role'] for m in item['prompt']] == ['system', 'user', 'assistant', 'user']
    assert normalize_preference({'prompt': 'Last letter: abc', 'completion': 'c', 'label': True}) == \
        {'prompt': [USER], 'completion': {'role': 'assistant', 'content': 'c'}, 'label': True}
    assert normalize_preference({'messages': [USER, {'role': 'assistant', 'content': 'h'}], 'label': 0})['label'] \
        is False
    # kto takes pairs too: the chosen answer desirable, the rejected one not
    assert [(r['completion']['content'], r['label']) for r in normalize_kto(WANT | {'prompt': 'Last letter: abc'})] \
        == [('c', True), ('h', False)]


def test_prompt_rows_keep_their_columns_for_the_rewards():
    row = normalize_prompt({'messages': [{'role': 'user', 'content': 'What is 2+2?'}], 'solution': '4', 'level': 1})
    assert row == {'prompt': [{'role': 'user', 'content': 'What is 2+2?'}], 'extra': {'solution': '4', 'level': 1}}
    # a final answer becomes the solution when there is none
    row = normalize_prompt({'query': 'What is 2+2?', 'response': '4'})
    assert row['prompt'][-1]['content'] == 'What is 2+2?' and row['extra'] == {'solution': '4'}


@pytest.mark.parametrize('row, field, words', [
    ({'prompt': 'Last letter: abc', 'chosen': 'c', 'rejected': 'c'}, 'rejected', 'identical to the chosen'),
    ({'messages': [USER, {'role': 'assistant', 'content': 'c'}], 'rejected_response': ' c '}, 'rejected_response',
     'identical'),
    ({'prompt': 'Last letter: abc', 'chosen': 'c'}, 'rejected', 'missing'),
    ({'messages': [USER, {'role': 'assistant', 'content': 'c'}]}, 'rejected', 'missing'),
    ({'prompt': 'Last letter: abc', 'chosen': 'c', 'rejected': None}, 'rejected', 'null'),
    ({'prompt': 'Last letter: abc', 'chosen': '', 'rejected': 'h'}, 'chosen', 'empty'),
    ({'chosen': 'c', 'rejected': 'h'}, 'prompt', 'missing'),
    ({'messages': [USER], 'rejected_response': 'h'}, 'messages', 'must end with the assistant'),
    ({'chosen': [USER, {'role': 'assistant', 'content': 'c'}],
      'rejected': [{'role': 'user', 'content': 'other'}, {'role': 'assistant', 'content': 'h'}]}, 'rejected',
     'share every turn'),
    ({'prompt': 'Last letter: abc', 'completion': 'c', 'label': 'maybe'}, 'label', 'true or false'),
])
def test_bad_rows_name_the_field(row, field, words):
    with pytest.raises(RowError) as e:
        normalize_pair(row)
    assert e.value.field == field and words in e.value.problem, (e.value.field, e.value.problem)


def test_kto_row_in_a_pairwise_dataset():
    with pytest.raises(RowError, match='KTO row'):
        normalize_pair({'prompt': 'q', 'completion': 'a', 'label': True}, 'dpo')


def test_encoded_answers_are_what_sft_labels(tokenizer):
    from lmforge.rlhf.data import encode_pair
    from lmforge.templates import IGNORE_INDEX, encode_chat

    e = encode_pair(tokenizer, WANT)
    sft = encode_chat(tokenizer, [USER, WANT['chosen']])
    assert e['chosen_ids'] == [t for t in sft['labels'] if t != IGNORE_INDEX]
    assert tokenizer.decode(e['chosen_ids']) == 'c<|im_end|>'
    assert tokenizer.decode(e['prompt_ids']).endswith('<|im_start|>assistant\n')


def test_bad_rows_are_reported_with_file_and_row(tmp_path, qwen2_dir, capsys):
    """Through the CLI: bad rows are skipped with file:row: field: problem; a file of only bad rows stops before
    any model loads, exit code 2, no traceback."""
    from lmforge.cli import main

    good = {'prompt': 'Last letter: abc', 'chosen': 'c', 'rejected': 'h'}
    path = write_jsonl(tmp_path / 'pairs.jsonl', [
        {'prompt': 'Last letter: abd', 'chosen': 'd', 'rejected': 'd'},
        {'prompt': 'Last letter: abe', 'chosen': 'e'},
        {'messages': [USER, {'role': 'assistant', 'content': 'c'}], 'rejected_response': 'c'}])
    code = main(['rlhf', '--model', qwen2_dir, '--dataset', path, '--output_dir', str(tmp_path / 'out')])
    err = capsys.readouterr()
    assert code == 2 and 'Traceback' not in err.err
    assert f'{path}:1: rejected: is identical to the chosen answer' in err.err, err.err
    assert 'trainable parameters' not in err.out  # no model was loaded

    with open(path, 'a') as f:  # a usable row too: the bad ones are listed, the run goes on
        import json
        f.write(json.dumps(good) + '\n')
    from lmforge.args.parse import from_kwargs
    from lmforge.args.rlhf import RlhfArgs
    from lmforge.rlhf.data import build_rlhf_datasets

    lines = []
    args = from_kwargs(RlhfArgs, model=qwen2_dir, dataset=[path])
    train, _ = build_rlhf_datasets(args, tokenizer_of(qwen2_dir), log=lines.append)
    assert len(train) == 1
    text = '\n'.join(lines)
    assert '3 invalid rows skipped' in text
    assert f'{path}:2: rejected: missing' in text
    assert f'{path}:3: rejected_response: is identical to the chosen answer' in text


def tokenizer_of(path):
    from lmforge.models import load_tokenizer
    from lmforge.templates import apply_template

    tok = load_tokenizer(path)
    apply_template(tok, None)
    return tok
