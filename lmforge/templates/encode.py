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

import bisect
import functools
import re
import warnings
import weakref
from dataclasses import dataclass

from lmforge.errors import TemplateError
from lmforge.templates.render import render, template_name
from lmforge.templates.verbatim import prints_contents_verbatim

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
    return _turn_span(tokenizer, messages, i, prompt, upto, ignore_empty_think)


def _turn_span(tokenizer, messages, i, prompt: str, upto: str, ignore_empty_think: bool):
    """``(upto, (start, end))``: the labelled characters of assistant message ``i`` given its two renderings."""
    if not upto.startswith(prompt):
        k = next((j for j, (a, b) in enumerate(zip(prompt, upto)) if a != b), min(len(prompt), len(upto)))
        raise TemplateError(
            f'the chat template of {template_name(tokenizer)} renders assistant message {i} differently from its '
            f'own generation prompt (prompt continues {prompt[k:k + 40]!r}, the rendered turn {upto[k:k + 40]!r}), '
            'so the turn cannot be trained the way inference will prompt it. Pass --template with a fixed '
            'template (see `lmforge template list`).')
    return _answer_span(tokenizer, messages, i, upto, len(prompt), ignore_empty_think)


def _answer_span(tokenizer, messages, i, upto: str, start: int, ignore_empty_think: bool):
    """`_turn_span` once ``upto[:start]`` is known to be the prompt."""
    answer = upto[start:]
    reasoning = reasoning_of(messages[i])
    if reasoning and reasoning[1].strip() not in answer:
        raise TemplateError(f'the chat template of {template_name(tokenizer)} does not render the {reasoning[0]} of '
                            f'assistant message {i}, so it cannot be trained. Use a model/template that renders '
                            'reasoning (--template), or put it inline as <think>...</think> in the content if the '
                            'model expects that.')
    end = start + len(answer.rstrip())
    if ignore_empty_think:
        m = EMPTY_THINK.match(answer) or (upto[:start].rstrip().endswith('<think>') and CLOSE_THINK.match(answer))
        if m:
            start += m.end()
    return upto, (start, max(start, end))


# --------------------------------------------------------------------------- rendering fast path
# Rendering every trained turn twice (2k+1 template renders for k turns) dominates encoding. For conversations of
# plain {role, content} string messages, the renders of a conversation *shape* (its roles and loss flags) are done
# once with placeholder contents (a "skeleton"), and each conversation of that shape renders only once for real:
# its full text must equal the skeleton's full text with the real contents put in (the template treats the contents
# as opaque text), otherwise it takes the slow path. The first conversation of each shape is encoded both ways and
# the shape keeps the fast path only if both agree. Results are identical to the slow path by construction. For a
# template proven to print contents verbatim (lmforge.templates.verbatim) the checking render is skipped: no render
# at all per conversation.

_HOLE = '\ue000{}\ue001'
_HOLE_RE = re.compile('\ue000(\\d+)\ue001')
_SKELETONS: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
_MAX_SHAPES = 4096
_NO_FAST = object()
_NO_LOSS = '<no loss key>'  # a message without a "loss" key


def _shape_key(tokenizer, messages, tools, loss_scale, kwargs):
    if tools or not isinstance(tokenizer.chat_template, str):
        return None
    shape = []
    for m in messages:
        content = m.get('content')
        if not isinstance(content, str) or '\ue000' in content or '\ue001' in content:
            return None
        if len(m) > 2 and not (len(m) == 3 and 'loss' in m) or 'role' not in m:
            return None
        shape.append((m['role'], m.get('loss', _NO_LOSS)))
    key = tokenizer.chat_template, tuple(shape), loss_scale, tuple(sorted(kwargs.items()))
    try:
        hash(key)
    except TypeError:
        return None
    return key



def _parts(text: str) -> list:
    """A skeleton text as [literal, message index, literal, ...]."""
    pieces = _HOLE_RE.split(text)
    return [p if k % 2 == 0 else int(p) for k, p in enumerate(pieces)]


def _fill(parts: list, contents: list[str]) -> str:
    return ''.join(contents[p] if k % 2 else p for k, p in enumerate(parts))


def _format_string(parts: list) -> str:
    """``_fill(parts, contents) == _format_string(parts).format(*contents)``, done in C."""
    return ''.join('{%d}' % p if k % 2 else p.replace('{', '{{').replace('}', '}}') for k, p in enumerate(parts))


def _is_prefix(short: list, long: list) -> bool:
    """Whether ``short`` filled with any contents is a prefix of ``long`` filled with the same: the same pieces, up
    to a last literal that begins the literal at its place in ``long``."""
    n = len(short)
    return n <= len(long) and short[:n - 1] == long[:n - 1] and n % 2 == 1 and long[n - 1].startswith(short[n - 1])


def _length(parts: list) -> tuple[int, tuple]:
    """The filled length of ``parts`` as (literal characters, holes): add the lengths of the holes' contents."""
    return sum(len(p) for p in parts[::2]), tuple(parts[1::2])


@dataclass
class _Skeleton:
    full: list                 # the parts of the whole conversation
    turns: list                # (prompt parts, prompt + answer parts) of each trained turn
    fmt: str                   # `_format_string` of ``full``
    spans: list | None         # when every turn's texts are prefixes of the whole: their `_length`s, else None


def _skeleton(tokenizer, key, loss_scale, kwargs):
    shape = key[1]
    fake = [{'role': role, 'content': _HOLE.format(j), **({} if loss is _NO_LOSS else {'loss': loss})}
            for j, (role, loss) in enumerate(shape)]
    try:
        full = _parts(render(tokenizer, fake, **kwargs))
        turns = [(_parts(render(tokenizer, fake[:i], add_generation_prompt=True, **kwargs)),
                  _parts(render(tokenizer, fake[:i + 1], **kwargs))) for i in trained_turns(fake, loss_scale)]
    except TemplateError:
        return None
    nested = all(_is_prefix(p, u) and _is_prefix(u, full) for p, u in turns)
    spans = [(_length(p), _length(u)) for p, u in turns] if nested else None
    return _Skeleton(full, turns, _format_string(full), spans)


def _fast_texts(tokenizer, skeleton: _Skeleton, messages, loss_scale, kwargs):
    """(full, turns) through the skeleton, or None when this conversation's text does not fit it. The conversation
    is rendered once to check that it fits, unless the template is proven to print contents verbatim
    (`lmforge.templates.verbatim`): then it fits by construction. When each turn's prompt and prompt + answer are
    prefixes of the whole text whatever the contents (known from the skeleton), they are cut out of it by length
    instead of being built."""
    contents = [m['content'] for m in messages]
    full = skeleton.fmt.format(*contents)
    if not prints_contents_verbatim(tokenizer.chat_template) and render(tokenizer, messages, **kwargs) != full:
        return None
    ignore_think = loss_scale == 'ignore_empty_think'
    trained = trained_turns(messages, loss_scale)
    if skeleton.spans is None:
        return full, [_turn_span(tokenizer, messages, i, _fill(p, contents), _fill(u, contents), ignore_think)
                      for i, (p, u) in zip(trained, skeleton.turns)]
    lengths = [len(c) for c in contents]
    turns = []
    for i, ((p_chars, p_holes), (u_chars, u_holes)) in zip(trained, skeleton.spans):
        start = p_chars + sum(lengths[h] for h in p_holes)
        stop = u_chars + sum(lengths[h] for h in u_holes)
        turns.append(_answer_span(tokenizer, messages, i, full[:stop], start, ignore_think))
    return full, turns


def _slow_texts(tokenizer, messages, tools, loss_scale, kwargs):
    full = render(tokenizer, messages, tools=tools, **kwargs)
    ignore_think = loss_scale == 'ignore_empty_think'
    turns = [_turn(tokenizer, messages, i, tools, ignore_think, kwargs) for i in trained_turns(messages, loss_scale)]
    return full, turns


def _render_turns(tokenizer, messages, tools, loss_scale, kwargs):
    key = _shape_key(tokenizer, messages, tools, loss_scale, kwargs)
    if key is None:
        return _slow_texts(tokenizer, messages, tools, loss_scale, kwargs)
    try:
        shapes = _SKELETONS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable
        return _slow_texts(tokenizer, messages, tools, loss_scale, kwargs)
    skeleton = shapes.get(key, _NO_FAST)
    if skeleton is _NO_FAST and key not in shapes:  # first of its shape: encode both ways, keep what agrees
        slow = _slow_texts(tokenizer, messages, tools, loss_scale, kwargs)
        skeleton = _skeleton(tokenizer, key, loss_scale, kwargs)
        if skeleton is not None:
            try:
                if _fast_texts(tokenizer, skeleton, messages, loss_scale, kwargs) != slow:
                    skeleton = None
            except TemplateError:
                skeleton = None
        if len(shapes) >= _MAX_SHAPES:
            shapes.clear()
        shapes[key] = skeleton
        return slow
    if skeleton is not None:
        fast = _fast_texts(tokenizer, skeleton, messages, loss_scale, kwargs)
        if fast is not None:
            return fast
    return _slow_texts(tokenizer, messages, tools, loss_scale, kwargs)


def _rust_backend(tokenizer):
    """The Rust tokenizer behind a fast tokenizer when ``tokenizer(text, add_special_tokens=False)`` would only
    configure it as it already is (no truncation, no padding, the same special-token splitting), else None: calling
    it directly gives the same encoding without the Python wrapper, which costs about a third of the time."""
    backend = getattr(tokenizer, '_tokenizer', None)
    if backend is not None and getattr(tokenizer, 'is_fast', False) and backend.truncation is None and \
            backend.padding is None and \
            getattr(backend, 'encode_special_tokens', False) == bool(getattr(tokenizer, 'split_special_tokens', False)):
        return backend
    return None


def _rust_encoding(tokenizer, text: str):
    """The Rust `Encoding` that ``tokenizer(text, add_special_tokens=False)`` is made from, or None (see
    `_rust_backend`)."""
    backend = _rust_backend(tokenizer)
    return None if backend is None else backend.encode(text, add_special_tokens=False)


def _labels_by_chars(enc, ids: list, spans: list) -> list | None:
    """Labels from the encoding's char -> token map, without building the whole offset list (the common case: every
    span is non-empty and its first and last characters belong to tokens); None otherwise. Tokens sharing a
    character (a multi-byte character split by byte-level BPE) are taken together, so that the labelled tokens are
    exactly those whose characters overlap a span."""
    labels = [IGNORE_INDEX] * len(ids)
    for a, b in spans:
        if b <= a:
            return None
        first, last = enc.char_to_token(a), enc.char_to_token(b - 1)
        if first is None or last is None:
            return None
        while first > 0 and enc.token_to_chars(first - 1)[1] > a:
            first -= 1
        while last + 1 < len(ids) and enc.token_to_chars(last + 1)[0] < b:
            last += 1
        labels[first:last + 1] = ids[first:last + 1]
    return labels


def _labels_by_offsets(ids: list, offsets: list, spans: list) -> list:
    labels = [IGNORE_INDEX] * len(ids)
    starts, ends = [o[0] for o in offsets], [o[1] for o in offsets]
    if starts == sorted(starts) and ends == sorted(ends):
        # offsets in text order (the usual case): each span labels one contiguous run of tokens, those that end
        # after its start and start before its end
        for a, b in spans:
            first, last = bisect.bisect_right(ends, a), bisect.bisect_left(starts, b)
            if first < last:
                labels[first:last] = ids[first:last]
        return labels
    k = 0
    for t, (s, e) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        if k == len(spans):
            break
        a, b = spans[k]
        if s < b and e > a:
            labels[t] = ids[t]
    return labels


def _sample_of(enc, text: str, spans: list) -> Sample:
    ids = enc.ids
    labels = _labels_by_chars(enc, ids, spans)
    if labels is None:
        labels = _labels_by_offsets(ids, enc.offsets, spans)
    return Sample(ids, labels, text)


def batch_encoder(tokenizer):
    """``texts -> encodings``: one call into the Rust tokenizer for many texts (it spreads them over its threads
    unless TOKENIZERS_PARALLELISM=false, and releases the GIL meanwhile), for `tokenize_spans_batch`; None when the
    tokenizer has to be called through its Python wrapper (see `_rust_backend`)."""
    backend = _rust_backend(tokenizer)
    return None if backend is None else functools.partial(backend.encode_batch, add_special_tokens=False)


def tokenize_spans_batch(tokenizer, items: list[tuple[str, list]], encodings: list | None = None) -> list[Sample]:
    """`tokenize_spans` of many ``(text, spans)`` at once: one call into the Rust tokenizer instead of one call per
    text (or the ``encodings`` of the texts that `batch_encoder` made already). The same samples."""
    if encodings is None:
        encode = batch_encoder(tokenizer)
        if encode is None or len(items) < 2:
            return [tokenize_spans(tokenizer, text, spans) for text, spans in items]
        encodings = encode([text for text, _ in items])
    return [_sample_of(enc, text, sorted(spans)) for enc, (text, spans) in zip(encodings, items)]


def tokenize_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> Sample:
    """Tokenize ``text``; a token is labelled when its characters overlap one of ``spans``."""
    if getattr(tokenizer, 'is_fast', False):
        spans = sorted(spans)
        enc = _rust_encoding(tokenizer, text)
        if enc is not None:
            return _sample_of(enc, text, spans)
        out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = out['input_ids']
        return Sample(ids, _labels_by_offsets(ids, out['offset_mapping'], spans), text)
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


def render_samples(tokenizer, messages: list[dict], tools: list | None = None, loss_scale: str = 'default',
                   **template_kwargs) -> tuple[list[tuple[str, list]], bool]:
    """The rendering half of `encode_chat_samples`: ``([(text, [(start, end), ...]), ...], split)``, the text of each
    sequence with the character spans that take loss; `tokenize_spans` turns each into a `Sample`."""
    check_template_support(tokenizer, messages, tools)
    full, turns = _render_turns(tokenizer, messages, tools, loss_scale, template_kwargs)
    if any(m.get('tool_calls') for m in messages):
        check_tool_calls_rendered(tokenizer, messages, '\n'.join([full] + [upto for upto, _ in turns]))
    if all(full.startswith(upto) for upto, _ in turns):
        return [(full, [span for _, span in turns])], False
    return [(upto, [span]) for upto, span in turns], True


def encode_chat_samples(tokenizer, messages: list[dict], tools: list | None = None, loss_scale: str = 'default',
                        **template_kwargs) -> tuple[list[Sample], bool]:
    """Every trained turn encoded as inference renders it: ``([samples], split)``.

    ``split`` is False when the whole conversation is one sequence (the template is prefix-consistent on it),
    True when each trained turn had to become its own sequence.
    """
    texts, split = render_samples(tokenizer, messages, tools, loss_scale, **template_kwargs)
    return [tokenize_spans(tokenizer, text, spans) for text, spans in texts], split


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
