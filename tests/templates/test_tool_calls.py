"""Generated text -> OpenAI-style tool calls, for each format a chat template teaches."""
from __future__ import annotations

import json

import pytest

from lmforge.templates.tool_calls import detect_format, parse_tool_calls, split_reasoning

from .helpers import fixture_names, load_fixture, needs_fixtures


def calls_of(text, fmt):
    content, calls = parse_tool_calls(text, fmt=fmt)
    return content, [(c['function']['name'], json.loads(c['function']['arguments'])) for c in calls]


def test_hermes_one_call_with_text_around():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert calls_of(text, 'hermes') == ('Let me check.', [('get_weather', {'city': 'Paris'})])


def test_hermes_several_calls_a_list_and_an_unclosed_block():
    text = ('<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
            '<tool_call>[{"name": "b", "arguments": {"x": 1}}, {"name": "c", "arguments": "{\\"y\\": 2}"}]</tool_call>'
            '<tool_call>{"name": "d", "arguments": {"z": 3}}')  # generation stopped before </tool_call>
    assert calls_of(text, 'hermes') == ('', [('a', {}), ('b', {'x': 1}), ('c', {'y': 2}), ('d', {'z': 3})])


def test_malformed_calls_stay_content():
    text = 'Sure <tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    assert parse_tool_calls(text, fmt='hermes') == (text, [])
    assert parse_tool_calls('[TOOL_CALLS] [{"name": oops}]', fmt='mistral') == ('[TOOL_CALLS] [{"name": oops}]', [])
    assert parse_tool_calls('{"no_name": 1}', fmt='llama3_json') == ('{"no_name": 1}', [])


def test_llama3_json():
    assert calls_of('{"name": "get_weather", "parameters": {"city": "Paris"}}', 'llama3_json') == \
        ('', [('get_weather', {'city': 'Paris'})])
    assert calls_of('<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"k": 1}}<|eom_id|>',
                    'llama3_json') == ('', [('a', {}), ('b', {'k': 1})])
    assert calls_of('It is sunny in Paris.', 'llama3_json') == ('It is sunny in Paris.', [])


def test_mistral_both_syntaxes():
    text = 'Checking. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcdefghi"}]'
    content, calls = parse_tool_calls(text, fmt='mistral')
    assert content == 'Checking.' and calls[0]['id'] == 'abcdefghi'
    assert json.loads(calls[0]['function']['arguments']) == {'city': 'Paris'}
    assert calls_of('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]now[ARGS]{}', 'mistral') == \
        ('', [('get_weather', {'city': 'Paris'}), ('now', {})])


def test_deepseek_v3_and_v31():
    v3 = ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```'
          '<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>now\n```json\n{}\n```<｜tool▁call▁end｜>'
          '<｜tool▁calls▁end｜>')
    assert calls_of('Let me see.' + v3, 'deepseek') == ('Let me see.', [('get_weather', {'city': 'Paris'}),
                                                                          ('now', {})])
    v31 = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
    assert calls_of(v31, 'deepseek') == ('', [('get_weather', {'city': 'Paris'})])


def test_granite_and_harmony():
    assert calls_of('<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]', 'granite') == \
        ('', [('get_weather', {'city': 'Paris'})])
    harmony = ('<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary '
               'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>')
    assert calls_of(harmony, 'harmony') == ('', [('get_weather', {'city': 'Paris'})])
    assert calls_of('<|channel|>final<|message|>It is 21C.<|return|>', 'harmony') == ('It is 21C.', [])


def test_calls_are_openai_shaped():
    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a": "é"}}</tool_call>', fmt='hermes')
    assert set(calls[0]) == {'id', 'type', 'function'} and calls[0]['type'] == 'function'
    assert calls[0]['id'].startswith('call_') and calls[0]['function']['arguments'] == '{"a": "é"}'


def test_no_format_means_all_content():
    assert parse_tool_calls('  plain answer ', '{{ messages }}') == ('plain answer', [])
    with pytest.raises(ValueError, match='unknown tool-call format'):
        parse_tool_calls('x', fmt='nope')


def test_split_reasoning():
    assert split_reasoning('<think>\nAdd.\n</think>\n\nIt is 4.') == ('Add.', 'It is 4.')
    assert split_reasoning('Add.\n</think>\n\nIt is 4.') == ('Add.', 'It is 4.')  # the prompt opened <think>
    assert split_reasoning('It is 4.') == ('', 'It is 4.')


FORMATS = {'qwen2.5-instruct': 'hermes', 'qwen3': 'hermes', 'smollm3': 'hermes', 'falcon3-instruct': 'hermes',
           'llama-3.1-instruct': 'llama3_json', 'llama-3.2-instruct': 'llama3_json',
           'mistral-7b-instruct-v0.3': 'mistral', 'deepseek-v3': 'deepseek', 'deepseek-r1': 'deepseek',
           'deepseek-r1-distill-qwen': 'deepseek', 'gpt-oss': 'harmony', 'granite-3.1-instruct': 'granite'}


@needs_fixtures
@pytest.mark.parametrize('name', fixture_names())
def test_format_detected_from_the_template(name):
    assert detect_format(load_fixture(name)['chat_template']) == FORMATS.get(name)
