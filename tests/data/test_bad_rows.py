"""Row-level validation: every kind of bad row gives `file:row: field: problem` with the right row number, the same
in `lmforge data check` (exit 1) and in training (skipped with a count and examples, or --strict)."""
import json

import pytest

from lmforge.data import encode_rows, read_dataset
from lmforge.errors import DataError

U, A = {'role': 'user', 'content': 'Last letter: abc'}, {'role': 'assistant', 'content': 'c'}
S = {'role': 'system', 'content': 'Be brief.'}
GOOD = json.dumps({'messages': [U, A]})

# (the raw line, the expected "field: problem" start) -- one kind of problem each
BAD = [
    ('this is not json', 'row: bad JSON line: Expecting value'),
    ('[1, 2]', 'row: expected a JSON object, got list'),
    ({'messages': 'hello'}, 'messages: expected a list of messages, got a string that is not JSON'),
    ({'messages': {'role': 'user'}}, 'messages: expected a list of messages, got dict'),
    ({'messages': []}, 'messages: is empty'),
    ({'messages': ['hi', A]}, 'messages[0]: expected an object, got str'),
    ({'messages': [{'content': 'q'}, A]}, 'messages[0]: missing "role"'),
    ({'messages': [{'role': 'robot', 'content': 'q'}, A]}, "messages[0].role: unknown role 'robot'"),
    ({'messages': [U, {'role': 'assistant'}]}, 'messages[1]: missing "content"'),
    ({'messages': [U, {'role': 'assistant', 'content': None}]}, 'messages[1]: "content" is null'),
    ({'messages': [{'role': 'user', 'content': 7}, A]}, 'messages[0].content: expected a string, got int'),
    ({'messages': [{'role': 'user', 'content': '   '}, A]}, 'messages[0].content: is empty'),
    ({'messages': [U, {'role': 'assistant', 'content': ''}]}, 'messages[1].content: is empty'),
    ({'messages': [{'role': 'user', 'content': [{'text': 'x'}]}, A]}, 'messages[0].content[0]: expected a content '
                                                                      'part'),
    ({'messages': [S]}, 'messages: holds only a system message'),
    ({'messages': [U, A, S]}, 'messages[2].role: a system message is only allowed first'),
    ({'messages': [A, U, A]}, 'messages: the first non-system message is from the assistant'),
    ({'messages': [U, U, A]}, 'messages[1].role: wrong role order: two user messages in a row'),
    ({'messages': [U, A, A]}, 'messages[2].role: wrong role order: two assistant messages in a row'),
    ({'messages': [U, {'role': 'tool', 'content': '42'}, A]}, 'messages[1].role: wrong role order: a tool result '
                                                              'after a user message'),
    ({'messages': [U]}, 'messages: has no assistant message to train on'),
    ({'messages': [U, A, U]}, 'messages: ends with a user message'),
    ({'messages': [U, {**A, 'loss': 'yes'}]}, "messages[1].loss: expected true or false, got 'yes'"),
    ({'messages': [U, {'role': 'assistant', 'content': '', 'tool_calls': [{'function': {'arguments': '{}'}}]}]},
     'messages[1].tool_calls[0]: missing the function name'),
    ({'messages': [U, {'role': 'assistant', 'content': '',
                       'tool_calls': [{'function': {'name': 'f', 'arguments': '{oops'}}]}]},
     'messages[1].tool_calls[0].arguments: not valid JSON'),
    ({'conversations': [{'from': 'alien', 'value': 'q'}, {'from': 'gpt', 'value': 'a'}]},
     "conversations[0].from: unknown role 'alien'"),
    ({'conversations': [{'from': 'human', 'value': 'q'}, {'from': 'gpt'}]}, 'conversations[1]: missing "value"'),
    ({'instruction': 'Say hi', 'input': '', 'output': None}, 'output: is null'),
    ({'instruction': ' ', 'output': 'hi'}, 'instruction: is empty'),
    ({'query': 'q', 'response': 12}, 'response: expected a string, got int'),
    ({'query': 'q', 'response': 'r', 'history': [['only one']]}, 'history[0]: expected a [query, response] pair'),
    ({'query': 'q', 'response': 'r', 'history': [['q0', None]]}, 'history[0][1]: is null'),
    ({'query': 'q', 'response': 'r', 'history': 'not json'}, 'history: expected a list of [query, response] '
                                                              'pairs'),
    ({'query': 'q', 'response': 'r', 'system': 3}, 'system: expected a string, got int'),
    ({'foo': 'bar', 'baz': 1}, 'row: unrecognised format'),
    ({'text': 'just prose'}, 'row: a plain-text row'),
    ({'messages': [U, A], 'tools': '[{"type": '}, 'tools: not valid JSON'),
    ({'messages': [U, A], 'tools': 5}, 'tools: expected a list of tool schemas, got int'),
    ({'messages': [U, A], 'images': ['nope.png']}, 'images[0]: file not found: nope.png'),
    ({'messages': [U, A], 'images': [42]}, 'images[0]: expected a file path or URL, got int'),
    ({'messages': [{'role': 'user', 'content': '<image><image>what?'}, A], 'images': ['pic.png']},
     'images: 2 <image> tags in the messages but 1 image file(s)'),
    ({'messages': [U, A], 'images': ['pic.png']}, 'images: lmforge sft trains text-only chat models'),
    ({'prompt': 'q', 'chosen': 'same', 'rejected': 'same'}, 'rejected: '),
    ({'messages': [U, A], 'rejected_response': None}, 'rejected_response: is null'),
    ({'prompt': 'q', 'completion': 'a', 'label': 'maybe'}, 'label: expected true or false'),
    ({'prompt': 'q', 'completion': 'a', 'label': False}, 'label: false: sft does not train on an undesirable'),
]


def _write_mixed(tmp_path) -> tuple[str, list[tuple[int, str]]]:
    """A jsonl file with a good row before every bad one; returns (path, [(line number, expected), ...])."""
    (tmp_path / 'pic.png').write_bytes(b'\x89PNG')
    lines, expected = [], []
    for raw, want in BAD:
        lines.append(GOOD)
        lines.append(raw if isinstance(raw, str) else json.dumps(raw))
        expected.append((len(lines), want))
    lines.append(GOOD)
    path = tmp_path / 'mixed.jsonl'
    path.write_text('\n'.join(lines) + '\n')
    return str(path), expected


def test_at_least_30_kinds_of_bad_rows():
    assert len({want for _, want in BAD}) == len(BAD) >= 30


def test_every_bad_row_is_reported_with_its_row_and_problem(tmp_path, tokenizer):
    path, expected = _write_mixed(tmp_path)
    samples, report = encode_rows(read_dataset(path), tokenizer, 'sft', 64, 'delete')
    assert len(samples) == len(BAD) + 1  # every good row encoded
    assert len(report.invalid) == len(expected)
    for got, (line, want) in zip(report.invalid, expected):
        assert got.startswith(f'{path}:{line}: {want}'), (got, line, want)
    # the chosen == rejected row names the rejected answer and the chosen one
    same = report.invalid[[w for _, w in BAD].index('rejected: ')]
    assert 'chosen' in same


@pytest.mark.parametrize('row, want', [
    ({'text': ''}, 'text: is empty'),
    ({'text': 5}, 'text: expected a string, got int'),
    ({'title': 'x'}, 'text: missing: pt needs a "text" column'),
    ({'messages': 'x'}, 'messages: expected a list of messages'),
])
def test_bad_plain_text_rows(tmp_path, tokenizer, row, want):
    path = tmp_path / 'pt.jsonl'
    path.write_text(json.dumps({'text': 'fine'}) + '\n' + json.dumps(row) + '\n')
    _, report = encode_rows(read_dataset(str(path)), tokenizer, 'pt', 64, 'delete')
    assert report.invalid == [f'{path}:2: {want}'] or report.invalid[0].startswith(f'{path}:2: {want}')


def test_strict_stops_at_the_first_invalid_row(tmp_path, tokenizer):
    path, expected = _write_mixed(tmp_path)
    with pytest.raises(DataError, match=f'--strict.*{path}:{expected[0][0]}: row: bad JSON line'):
        encode_rows(read_dataset(path), tokenizer, 'sft', 64, 'delete', strict=True)


def test_data_check_reports_everything_and_exits_1(tmp_path, qwen2_dir, capsys):
    from lmforge.data.cli import main
    path, expected = _write_mixed(tmp_path)
    long_row = json.dumps({'messages': [{'role': 'user', 'content': 'word ' * 40}, A]})
    no_loss = json.dumps({'messages': [U, {**A, 'loss': False}]})
    with open(path, 'a') as f:
        f.write(long_row + '\n' + no_loss + '\n')
    assert main(['check', '--dataset', path, '--model', qwen2_dir, '--max_length', '48']) == 1
    out = capsys.readouterr().out
    assert f'dataset {path}' in out and f'rows: {2 * len(BAD) + 3}' in out
    assert 'format: messages ' in out and 'sharegpt 2' in out and 'alpaca 2' in out and 'invalid 2' in out
    assert 'tokens per sample: p50 ' in out and 'p99 ' in out and 'max ' in out
    assert 'over --max_length 48: 1 rows' in out
    assert 'no trained tokens: 1 samples' in out
    assert f'invalid rows: {len(BAD)}' in out
    for line, want in expected:
        assert f'    {path}:{line}: {want}' in out


def test_data_check_clean_data_exits_0(tmp_path, qwen2_dir, capsys):
    from lmforge.data.cli import main
    path = tmp_path / 'ok.jsonl'
    path.write_text(GOOD + '\n' + GOOD + '\n')
    assert main(['check', '--dataset', str(path), '--model', qwen2_dir]) == 0
    assert 'invalid rows: 0' in capsys.readouterr().out
    assert main(['check', '--dataset', str(tmp_path / 'nope.jsonl'), '--model', qwen2_dir]) == 2
    assert 'file not found' in capsys.readouterr().err


def test_training_skips_invalid_rows_with_a_count_and_examples_or_fails_with_strict(tmp_path, tokenizer):
    from lmforge.args import SftArgs, from_kwargs
    from lmforge.data import build_datasets
    path, expected = _write_mixed(tmp_path)
    logged = []
    args = from_kwargs(SftArgs, model='unused', dataset=[path], max_length=64, load_from_cache_file=False)
    train, _ = build_datasets(args, tokenizer, 'sft', log=logged.append)
    assert len(train) == len(BAD) + 1
    text = '\n'.join(logged)
    assert f'{len(BAD)} invalid rows skipped, e.g.:' in text
    assert f'    {path}:{expected[0][0]}: {expected[0][1]}' in text
    with pytest.raises(DataError, match='--strict'):
        build_datasets(from_kwargs(SftArgs, model='unused', dataset=[path], max_length=64, strict=True,
                                   load_from_cache_file=False), tokenizer, 'sft', log=logged.append)
