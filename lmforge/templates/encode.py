"""Conversations -> input_ids and labels, with the loss mask derived from the model's own chat template.

For each trained assistant message i the template renders
    prompt_i = render(messages[:i], add_generation_prompt=True)    what the model sees at inference
    upto_i   = render(messages[:i + 1])                              the prompt followed by the answer
so the answer is ``upto_i[len(prompt_i):]``: its content plus whatever the template closes the turn with
(``<|im_end|>\\n``, ``<|eot_id|>``, ``</s>``, ``<end_of_turn>\\n``...). The labelled characters are that text up to its
last non-whitespace character — the content and the end-of-turn token(s), never a newline the template adds after
them nor any part of the prompt. Characters become tokens through the fast tokenizer's offset mapping.

Prefix consistency: when every ``upto_i`` is a prefix of the whole rendered conversation, the conversation is one
sequence and each trained turn sees exactly the prompt inference would give it. When it is not (templates that drop
reasoning from history, add empty think blocks, move the system prompt), each trained turn becomes its own sequence
``upto_i`` — again exactly what inference sees — and the caller is told (``split``). Nothing is mis-masked silently.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from lmforge.errors import TemplateError
from lmforge.templates.render import render, template_name

IGNORE_INDEX = -100
EMPTY_THINK = re.compile(r'\s*<think>\s*</think>\s*')


@dataclass
class Sample:
    input_ids: list
    labels: list
    text: str

    def as_dict(self) -> dict:
        return {'input_ids': self.input_ids, 'labels': self.labels}


def trained_turns(messages: list[dict], loss_scale: str = 'default') -> list[int]:
    """Indices of the assistant messages that take loss: all of them, or the last one (``last_round``);
    a message with ``"loss": false`` never does."""
    turns = [i for i, m in enumerate(messages) if m.get('role') == 'assistant']
    if loss_scale == 'last_round':
        turns = turns[-1:]
    return [i for i in turns if messages[i].get('loss', True) is not False]


def check_template_support(tokenizer, messages: list[dict], tools: list | None) -> None:
    """Tools, tool calls, tool messages and reasoning only work through a template that renders them."""
    source = tokenizer.chat_template or ''
    needs = []
    if tools:
        needs.append(('tools', 'tools'))
    if any(m.get('tool_calls') for m in messages):
        needs.append(('tool_calls', 'assistant tool_calls'))
    if any(m.get('role') == 'tool' for m in messages):
        needs.append(('tool', '"tool" messages'))
    if any(m.get('reasoning_content') for m in messages):
        needs.append(('reasoning_content', 'reasoning_content'))
    for word, what in needs:
        if word not in source:
            raise TemplateError(f'the chat template of {template_name(tokenizer)} does not render {what}: '
                                f'it never mentions {word!r}. Use a model/template with that support '
                                '(--template) or remove the field from the data.')


def _turn(tokenizer, messages, i, tools, ignore_empty_think, kwargs):
    prompt = render(tokenizer, messages[:i], tools=tools, add_generation_prompt=True, **kwargs)
    upto = render(tokenizer, messages[:i + 1], tools=tools, **kwargs)
    if not upto.startswith(prompt):
        k = next((j for j, (a, b) in enumerate(zip(prompt, upto)) if a != b), min(len(prompt), len(upto)))
        raise TemplateError(
            f'the chat template of {template_name(tokenizer)} renders assistant message {i} differently from its '
            f'own generation prompt (prompt continues {prompt[k:k + 40]!r}, the rendered turn {upto[k:k + 40]!r}), '
            'so the turn cannot be trained the way inference will prompt it. Pass --template with a fixed '
            'template (see `lmforge template list`).')
    answer = upto[len(prompt):]
    start, end = len(prompt), len(prompt) + len(answer.rstrip())
    if ignore_empty_think:
        m = EMPTY_THINK.match(answer)
        if m:
            start += m.end()
    return upto, (start, max(start, end))


def tokenize_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> Sample:
    """Tokenize ``text``; a token is labelled when its characters overlap one of ``spans``."""
    if getattr(tokenizer, 'is_fast', False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc['input_ids'], enc['offset_mapping']
        labels = [IGNORE_INDEX] * len(ids)
        spans = sorted(spans)
        k = 0
        for t, (s, e) in enumerate(offsets):
            while k < len(spans) and spans[k][1] <= s:
                k += 1
            if k == len(spans):
                break
            a, b = spans[k]
            if s < b and e > a:
                labels[t] = ids[t]
        return Sample(ids, labels, text)
    # Slow tokenizers have no offsets: tokenize the pieces between span boundaries separately.
    ids, labels, pos = [], [], 0
    for a, b in sorted(spans):
        for piece, trained in ((text[pos:a], False), (text[a:b], True)):
            if piece:
                part = tokenizer(piece, add_special_tokens=False)['input_ids']
                ids += part
                labels += part if trained else [IGNORE_INDEX] * len(part)
        pos = b
    if text[pos:]:
        part = tokenizer(text[pos:], add_special_tokens=False)['input_ids']
        ids += part
        labels += [IGNORE_INDEX] * len(part)
    return Sample(ids, labels, text)


def encode_chat_samples(tokenizer, messages: list[dict], tools: list | None = None, loss_scale: str = 'default',
                        **template_kwargs) -> tuple[list[Sample], bool]:
    """Every trained turn encoded as inference renders it: ``([samples], split)``.

    ``split`` is False when the whole conversation is one sequence (the template is prefix-consistent on it),
    True when each trained turn had to become its own sequence.
    """
    check_template_support(tokenizer, messages, tools)
    full = render(tokenizer, messages, tools=tools, **template_kwargs)
    ignore_think = loss_scale == 'ignore_empty_think'
    turns = [_turn(tokenizer, messages, i, tools, ignore_think, template_kwargs)
             for i in trained_turns(messages, loss_scale)]
    if all(full.startswith(upto) for upto, _ in turns):
        return [tokenize_spans(tokenizer, full, [span for _, span in turns])], False
    return [tokenize_spans(tokenizer, upto, [span]) for upto, span in turns], True


def encode_chat(tokenizer, messages: list[dict], tools: list | None = None, loss_scale: str = 'default',
                **template_kwargs) -> dict:
    """``{"input_ids": [...], "labels": [...]}`` for a conversation; labels are -100 where no loss is taken.

    The labels cover each trained assistant message's content and its end-of-turn token(s), nothing else. If the
    template is not prefix-consistent on this conversation (e.g. it drops reasoning from earlier turns), the result
    is the last trained turn rendered as inference sees it, with a warning; `encode_chat_samples` returns every turn.
    """
    samples, split = encode_chat_samples(tokenizer, messages, tools, loss_scale, **template_kwargs)
    if not samples:  # no trained turn: the whole conversation as context only
        text = render(tokenizer, messages, tools=tools, **template_kwargs)
        return tokenize_spans(tokenizer, text, []).as_dict()
    if split and len(samples) > 1:
        warnings.warn(f'the chat template of {template_name(tokenizer)} renders history differently from the final '
                      f'turn; encode_chat returns the last of {len(samples)} turn sequences '
                      '(encode_chat_samples returns all)', stacklevel=2)
    return samples[-1].as_dict()


def end_of_turn_tokens(tokenizer, **template_kwargs) -> list[str]:
    """The special token(s) the template closes an assistant turn with, found by rendering a probe turn."""
    probe = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'PROBE-ANSWER'}]
    try:
        prompt = render(tokenizer, probe[:1], add_generation_prompt=True, **template_kwargs)
        upto = render(tokenizer, probe, **template_kwargs)
    except TemplateError:
        return []
    at = upto.find('PROBE-ANSWER', len(prompt) if upto.startswith(prompt) else 0)
    if at < 0:
        return []
    tail = upto[at + len('PROBE-ANSWER'):].rstrip()
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    found = [tok for tok in special if tok and tok in tail]
    return sorted(found, key=tail.rfind)


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that end generation: the template's end-of-turn tokens, generation_config's and the tokenizer's
    eos."""
    ids = []
    for tok in end_of_turn_tokens(tokenizer):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.append(tid)
    eos = getattr(generation_config, 'eos_token_id', None)
    ids += eos if isinstance(eos, list) else [eos]
    ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(i for i in ids if i is not None))
