"""Which turns take loss: ``"loss": false`` per message, loss_scale last_round and ignore_empty_think."""
from __future__ import annotations

import pytest

from lmforge.templates import IGNORE_INDEX, encode_chat, encode_chat_samples

from .helpers import applied_tokenizer, decode, labelled_runs, needs_fixtures
from .test_fixture_templates import EOS_DS

pytestmark = needs_fixtures


def chat(*answers, loss=None) -> list[dict]:
    messages = []
    for k, answer in enumerate(answers):
        messages.append({'role': 'user', 'content': f'Question {k}?'})
        messages.append({'role': 'assistant', 'content': answer})
    for i, flag in (loss or {}).items():
        messages[i]['loss'] = flag
    return messages


def runs(tok, messages, **kw) -> list[str]:
    samples, _ = encode_chat_samples(tok, messages, **kw)
    return [run for s in samples for run in labelled_runs(tok, s)]


def test_loss_false_skips_that_turn_but_keeps_it_as_context():
    tok = applied_tokenizer('qwen2.5-instruct')
    messages = chat('It is 4.', 'It is 6.', loss={1: False})
    assert runs(tok, messages) == ['It is 6.<|im_end|>']
    clean = [{k: v for k, v in m.items() if k != 'loss'} for m in messages]
    out = encode_chat(tok, messages)
    assert decode(tok, out['input_ids']) == tok.apply_chat_template(clean, tokenize=False)  # 'loss' never rendered


def test_loss_true_is_the_default():
    tok = applied_tokenizer('llama-3.1-instruct')
    assert runs(tok, chat('It is 4.', 'It is 6.', loss={1: True})) == ['It is 4.<|eot_id|>', 'It is 6.<|eot_id|>']


def test_no_trained_turn_gives_context_only():
    tok = applied_tokenizer('qwen2.5-instruct')
    out = encode_chat(tok, chat('It is 4.', loss={1: False}))
    assert set(out['labels']) == {IGNORE_INDEX}
    assert decode(tok, out['input_ids']).endswith('It is 4.<|im_end|>\n')


@pytest.mark.parametrize('name, expected', [
    ('qwen2.5-instruct', ['It is 6.<|im_end|>']),
    ('qwen3', ['<think>\n\n</think>\n\nIt is 6.<|im_end|>']),
    ('chatglm3-6b', ['\n It is 6.<|user|>']),
])
def test_last_round(name, expected):
    tok = applied_tokenizer(name)
    samples, split = encode_chat_samples(tok, chat('It is 4.', 'It is 6.'), loss_scale='last_round')
    assert len(samples) == 1 and not split  # one trained turn: one sequence, the whole conversation
    assert labelled_runs(tok, samples[0]) == expected
    assert 'It is 4.' in samples[0].text


def test_last_round_respects_loss_false():
    tok = applied_tokenizer('qwen2.5-instruct')
    assert runs(tok, chat('It is 4.', 'It is 6.', loss={3: False}), loss_scale='last_round') == []


@pytest.mark.parametrize('name, empty, full', [
    ('qwen3', 'It is 4.<|im_end|>', '<think>\nAdd them.\n</think>\n\nIt is 4.<|im_end|>'),
    ('deepseek-r1', f'It is 4.{EOS_DS}', f'Add them.\n</think>\n\nIt is 4.{EOS_DS}'),  # <think> is in the prompt
])
def test_ignore_empty_think(name, empty, full):
    tok = applied_tokenizer(name)
    assert runs(tok, chat('It is 4.'), loss_scale='ignore_empty_think') == [empty]
    thinking = chat('It is 4.')
    thinking[1]['reasoning_content'] = 'Add them.'
    assert runs(tok, thinking, loss_scale='ignore_empty_think') == [full]  # a real think block is trained


def test_encode_chat_returns_the_last_turn_of_a_split_conversation_with_a_warning():
    tok = applied_tokenizer('qwen3')
    with pytest.warns(UserWarning, match='returns the last of 2 turn sequences'):
        out = encode_chat(tok, chat('It is 4.', 'It is 6.'))
    assert decode(tok, out['input_ids']) == tok.apply_chat_template(chat('It is 4.', 'It is 6.'), tokenize=False)
