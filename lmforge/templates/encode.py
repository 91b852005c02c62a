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

Nothing is dropped silently either: a tool call or a reasoning text that the template does not render is an error,
not a turn trained without it. A template whose own generation prompt no rendered turn continues (DeepSeek-R1's
``<think>\\n``) is an error here; `apply_template` installs the named fix for it (`lmforge.templates.fixes`).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from lmforge.errors import TemplateError
from lmforge.templates.render import render, template_name

IGNORE_INDEX = -100
EMPTY_THINK = re.compile(r'\s*<think>\s*</think>\s*')
CLOSE_THINK = re.compile(r'\s*</think>\s*')  # the rest of an empty think block whose <think> the prompt opened
# Names a message's reasoning may come under; transformers copies each to the others before rendering.
REASONING_FIELDS = ('reasoning_content', 'thinking', 'reasoning')


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


def template_source(tokenizer) -> str:
    """The template text (all of them, for a tokenizer with a dict of named templates)."""
    source = tokenizer.chat_template or ''
    return '\n'.join(source.values()) if isinstance(source, dict) else source


def check_template_support(tokenizer, messages: list[dict], tools: list | None) -> None:
    """Tools, tool calls, tool messages and reasoning only work through a template that renders them."""
    source = template_source(tokenizer)
    needs = []
    if tools:
        needs.append((('tools',), 'tools'))
    if any(m.get('tool_calls') for m in messages):
        needs.append((('tool_calls',), 'assistant tool_calls'))
    if any(m.get('role') == 'tool' for m in messages):
        needs.append((('tool',), '"tool" messages'))
    for words, what in needs:
        if not any(w in source for w in words):
            raise TemplateError(f'the chat template of {template_name(tokenizer)} does not render {what}: '
                                f'it never mentions {" or ".join(map(repr, words))}. Use a model/template with that '
                                'support (--template) or remove the field from the data.')


def reasoning_of(message: dict) -> tuple[str, str] | None:
    """``(field, text)`` of a message's reasoning, if it has any."""
    return next(((f, message[f]) for f in REASONING_FIELDS if isinstance(message.get(f), str) and message[f].strip()),
                None)


def check_tool_calls_rendered(tokenizer, messages: list[dict], text: str) -> None:
    """Every tool call must reach the rendered text: some templates drop a call silently (e.g. ones that render a
    call only when ``content`` is None, a key transformers removes before rendering)."""
    for i, m in enumerate(messages):
        for call in m.get('tool_calls') or []:
            name = (call.get('function') or call).get('name', '')
            if name and name not in text:
                raise TemplateError(f'the chat template of {template_name(tokenizer)} dropped the tool call {name!r} '
                                    f'of message {i}: it does not appear in the rendered text, so training would '
                                    'teach the turn without its call. Use a template that renders tool calls '
                                    '(--template) or check the message format (content "" with tool_calls).')


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
    reasoning = reasoning_of(messages[i])
    if reasoning and reasoning[1].strip() not in answer:
        raise TemplateError(f'the chat template of {template_name(tokenizer)} does not render the {reasoning[0]} of '
                            f'assistant message {i}, so it cannot be trained. Use a model/template that renders '
                            'reasoning (--template), or put it inline as <think>...</think> in the content if the '
                            'model expects that.')
    start, end = len(prompt), len(prompt) + len(answer.rstrip())
    if ignore_empty_think:
        m = EMPTY_THINK.match(answer) or (prompt.rstrip().endswith('<think>') and CLOSE_THINK.match(answer))
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
    check_tool_calls_rendered(tokenizer, messages, '\n'.join([full] + [upto for upto, _ in turns]))
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


def _tail_after(tokenizer, messages: list[dict], marker: str, tools=None, **template_kwargs) -> str | None:
    """What the template renders after the last ``marker`` of the final (assistant) message, or None."""
    try:
        prompt = render(tokenizer, messages[:-1], tools=tools, add_generation_prompt=True, **template_kwargs)
        upto = render(tokenizer, messages, tools=tools, **template_kwargs)
    except TemplateError:
        return None
    at = upto.rfind(marker)
    if at < (len(prompt) if upto.startswith(prompt) else 0):
        return None
    return upto[at + len(marker):].rstrip()


def end_of_turn_tokens(tokenizer, **template_kwargs) -> list[str]:
    """The special token(s) the template closes an assistant turn with, found by rendering probe turns: every special
    token after a plain answer, then — where the template renders tool calls — the token a tool-call turn ends with
    when that differs (gpt-oss's ``<|call|>``)."""
    special = sorted({t for t in (*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()) if t},
                     key=len, reverse=True)
    user = {'role': 'user', 'content': 'Hi'}
    found = []
    tail = _tail_after(tokenizer, [user, {'role': 'assistant', 'content': 'PROBE-ANSWER'}], 'PROBE-ANSWER',
                       **template_kwargs)
    if tail:
        found = sorted((t for t in special if t in tail), key=tail.rfind)
    source = template_source(tokenizer)
    if 'tool_calls' in source:
        schema = {'type': 'function', 'function': {'name': 'probe_tool', 'description': 'probe',
                                                   'parameters': {'type': 'object', 'properties': {}}}}
        for args in ({'q': 'PROBE-ARG'}, '{"q": "PROBE-ARG"}'):  # a dict, or a JSON string for templates that need it
            call = {'id': 'call0PROB', 'type': 'function', 'function': {'name': 'probe_tool', 'arguments': args}}
            tail = _tail_after(tokenizer, [user, {'role': 'assistant', 'content': '', 'tool_calls': [call]}],
                               'PROBE-ARG', tools=[schema] if 'tools' in source else None, **template_kwargs)
            if tail is not None:
                last = next((t for t in special if tail.endswith(t)), None)
                if last and last not in found:
                    found.append(last)
                break
    return found


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
