"""Every fixture chat template: training text, labels and generation prompt, derived from the template itself.

Expected labels are written out here per template, from the template's documented format — what an assistant turn
looks like after its generation prompt — and compared with the decoded labelled tokens; they are not computed by the
masking code under test.
"""
from __future__ import annotations

import warnings

import pytest

from lmforge.errors import TemplateError
from lmforge.templates import encode_chat, encode_chat_samples, end_of_turn_tokens, render_prompt, stop_token_ids

from .helpers import (applied_tokenizer, decode, fixture_names, fixture_tokenizer, labelled_runs, needs_fixtures,
                      results)

pytestmark = needs_fixtures

EOS_DS = '<｜end▁of▁sentence｜>'
# name -> (what the labels hold before the answer text, after it): the assistant turn as the model generates it
# after its generation prompt, up to and including its end-of-turn token(s).
TURN = {
    'chatglm3-6b': ('\n ', '<|user|>'),                    # fix close-final-turn: <|user|> ends the answer
    'command-r': ('', '<|END_OF_TURN_TOKEN|>'),
    'deepseek-r1': ('\n</think>\n\n', EOS_DS),             # fix think-prefill: the prompt ends with '<think>\n'
    'deepseek-r1-distill-qwen': ('\n</think>\n\n', EOS_DS),
    'deepseek-v3': ('', EOS_DS),
    'falcon3-instruct': ('', '<|endoftext|>'),
    'gemma-2-it': ('', '<end_of_turn>'),
    'gemma-3-it': ('', '<end_of_turn>'),
    'glm-4-9b-chat': ('\n', '<|user|>'),                   # fix close-final-turn
    'gpt-oss': ('<|channel|>final<|message|>', '<|return|>'),
    'granite-3.1-instruct': ('', '<|end_of_text|>'),
    'internlm2-chat': ('', '<|im_end|>'),
    'llama-3-instruct': ('', '<|eot_id|>'),
    'llama-3.1-instruct': ('', '<|eot_id|>'),
    'llama-3.2-instruct': ('', '<|eot_id|>'),
    'minicpm3': ('', '<|im_end|>'),
    'mistral-7b-instruct-v0.3': (' ', '</s>'),             # ' ' + content|trim + eos
    'mistral-small-3': ('', '</s>'),
    'phi-3-mini-instruct': ('', '<|end|>\n<|endoftext|>'),  # a training render ends with eos after the last <|end|>
    'phi-4': ('', '<|im_end|>'),
    'qwen2.5-instruct': ('', '<|im_end|>'),
    'qwen2.5-vl': ('', '<|im_end|>'),
    'qwen3': ('<think>\n\n</think>\n\n', '<|im_end|>'),    # the final turn always carries a think block
    'smollm3': ('', '<|im_end|>'),
    'yi-1.5-chat': ('', '<|im_end|>'),
    'zephyr-7b-beta': ('', '</s>'),
}
NAMES = fixture_names()
THINK_PREFILL = ('deepseek-r1', 'deepseek-r1-distill-qwen')
# Templates whose history renders differently from a final turn, so each trained turn is its own sequence: R1 and
# Qwen3 (reasoning/think blocks only in the final turn), gpt-oss (<|end|> in history, <|return|> at the end), Phi-3
# (eos only at the end of a training render).
SPLIT_WITHOUT_SYSTEM = {*THINK_PREFILL, 'gpt-oss', 'phi-3-mini-instruct', 'qwen3'}

Q1, A1, Q2, A2 = 'What is 2+2?', 'It is 4.', 'And 3+3?', 'It is 6.'
SYSTEM = 'Be brief.'


def expected(name: str, content: str) -> str:
    head, tail = TURN[name]
    return head + content + tail


def conversation(system: bool) -> list[dict]:
    msgs = [{'role': 'system', 'content': SYSTEM}] if system else []
    return msgs + [{'role': 'user', 'content': Q1}, {'role': 'assistant', 'content': A1},
                   {'role': 'user', 'content': Q2}, {'role': 'assistant', 'content': A2}]


def test_every_fixture_has_an_expectation():
    assert sorted(TURN) == NAMES


def check_encoding(name: str, tok, messages: list[dict], tools=None) -> tuple[list, bool]:
    """Text == the template's own rendering; labels == each assistant turn's answer + end of turn; the final turn's
    sequence == the inference prompt followed by exactly the labelled answer."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        samples, split = encode_chat_samples(tok, messages, tools)
    answers = [i for i, m in enumerate(messages) if m['role'] == 'assistant']
    if split:
        assert len(samples) == len(answers)
        for sample, i in zip(samples, answers):
            assert decode(tok, sample.input_ids) == tok.apply_chat_template(messages[:i + 1], tools=tools,
                                                                             tokenize=False)
            assert labelled_runs(tok, sample) == [expected(name, messages[i]['content'])]
    else:
        assert len(samples) == 1
        assert decode(tok, samples[0].input_ids) == tok.apply_chat_template(messages, tools=tools, tokenize=False)
        assert labelled_runs(tok, samples[0]) == [expected(name, messages[i]['content']) for i in answers]
    # train == serve: the last trained sequence is the inference prompt, then the labelled answer, then whitespace
    prompt = render_prompt(tok, messages[:-1], tools=tools)
    text = samples[-1].text
    assert text.startswith(prompt)
    assert text[len(prompt):].rstrip() == expected(name, messages[-1]['content']).rstrip()
    return samples, split


@pytest.mark.parametrize('name', NAMES)
def test_single_turn_without_system(name):
    tok = applied_tokenizer(name)
    check_encoding(name, tok, conversation(system=False)[:2])


@pytest.mark.parametrize('name', NAMES)
def test_multi_turn_without_system(name):
    tok = applied_tokenizer(name)
    _, split = check_encoding(name, tok, conversation(system=False))
    assert split == (name in SPLIT_WITHOUT_SYSTEM)


@pytest.mark.parametrize('name', NAMES)
def test_with_system(name):
    tok = applied_tokenizer(name)
    if not results(name)['supports_system_role']:
        with pytest.raises(TemplateError, match='System role not supported'):
            encode_chat(tok, conversation(system=True))
        return
    samples, split = check_encoding(name, tok, conversation(system=True))
    assert all(SYSTEM in s.text for s in samples), 'every trained sequence must carry the system prompt'
    # one sequence exactly where validate.py found the template prefix-consistent on this conversation; the
    # think-prefill fix makes R1's final turn differ from its history on purpose
    assert split == (not results(name)['prefix_consistent'] or name in THINK_PREFILL)


@pytest.mark.parametrize('name', NAMES)
def test_generation_prompt_is_the_templates_own(name):
    tok = applied_tokenizer(name)
    original = fixture_tokenizer(name)
    for messages in (conversation(False)[:1], conversation(False)[:3]):
        prompt = render_prompt(tok, messages)
        assert prompt == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert prompt == original.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize('name', NAMES)
def test_end_of_turn_tokens_stop_generation(name):
    tok = applied_tokenizer(name)
    head, tail = TURN[name]
    eot = end_of_turn_tokens(tok)
    assert eot and eot[0] in tail  # (a tool-call turn may end with another one: gpt-oss's <|call|>)
    assert set(tok.convert_tokens_to_ids(eot)) <= set(stop_token_ids(tok))


@pytest.mark.parametrize('name', [n for n in NAMES if results(n)['tools_schema_rendered']])
def test_tools_schema(name, weather_tool):
    tok = applied_tokenizer(name)
    messages = conversation(system=False)[:2]
    assert 'get_weather' in render_prompt(tok, messages[:1], tools=[weather_tool])
    check_encoding(name, tok, messages, tools=[weather_tool])


@pytest.mark.parametrize('name', [n for n in NAMES if not results(n)['static']['mentions_tools']])
def test_tools_refused_by_templates_without_them(name, weather_tool):
    with pytest.raises(TemplateError, match='does not render tools'):
        encode_chat(applied_tokenizer(name), conversation(system=False)[:2], tools=[weather_tool])
