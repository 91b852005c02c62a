"""Generated text -> OpenAI-style tool calls, in the format the model's own chat template teaches.

    content, calls = parse_tool_calls(text, tokenizer)     # or a template string, or a format name
    calls == [{"id": "call_...", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]

Formats (picked by `detect_format` from what the template renders):
    hermes      ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Qwen2.5/3, Hermes, SmolLM3; a JSON list
                inside one block too, as Falcon3 writes)
    llama3_json the whole answer is ``{"name": ..., "parameters": {...}}`` (Llama 3.1/3.2; ``;``-separated or a list
                for several calls; an optional leading ``<|python_tag|>``)
    mistral     ``[TOOL_CALLS] [{"name": ..., "arguments": {...}, "id": ...}]`` and the newer
                ``[TOOL_CALLS]name[ARGS]{...}``
    deepseek    ``<｜tool▁call▁begin｜>function<｜tool▁sep｜>name\\n```json\\n{...}\\n```<｜tool▁call▁end｜>`` (V3, R1) and
                ``<｜tool▁call▁begin｜>name<｜tool▁sep｜>{...}<｜tool▁call▁end｜>`` (V3.1)
    granite     ``<|tool_call|>[{"name": ..., "arguments": {...}}]``
    harmony     ``to=functions.name ... <|message|>{...}<|call|>`` (gpt-oss); content is the final channel's text

Text that does not parse stays content, with no calls: a malformed call is shown to the user, never lost.
``arguments`` is always a JSON string, as in the OpenAI API.
"""
from __future__ import annotations

import json
import re
import uuid

_DECODER = json.JSONDecoder()


def detect_format(chat_template: str | None) -> str | None:
    """The tool-call format a chat template renders, or None when it renders none lmforge knows."""
    source = chat_template or ''
    if isinstance(source, dict):
        source = '\n'.join(source.values())
    if '[TOOL_CALLS]' in source:
        return 'mistral'
    if '<｜tool▁call▁begin｜>' in source:
        return 'deepseek'
    if 'to=functions.' in source or '<|call|>' in source:
        return 'harmony'
    if '<tool_call>' in source:
        return 'hermes'
    if '<|tool_call|>' in source:
        return 'granite'
    if '"parameters": ' in source and 'tool_call' in source:
        return 'llama3_json'
    return None


def make_call(name: str, arguments, call_id: str | None = None) -> dict:
    """One OpenAI-style tool call; ``arguments`` (a dict or a JSON string) becomes a JSON string."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {'id': call_id or f'call_{uuid.uuid4().hex[:24]}', 'type': 'function',
            'function': {'name': name, 'arguments': arguments}}


def _from_object(obj) -> dict | None:
    """``{"name": ..., "arguments"|"parameters": ...}`` (or OpenAI's ``{"function": {...}}``) -> a call."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get('function'), dict):
        obj = {**obj['function'], 'id': obj.get('id')}
    name = obj.get('name')
    if not isinstance(name, str) or not name:
        return None
    args = obj['arguments'] if 'arguments' in obj else obj.get('parameters', {})
    return make_call(name, args, obj.get('id') if isinstance(obj.get('id'), str) else None)


def _calls_from_json(text: str) -> list[dict] | None:
    """A JSON object or list of call objects, the whole of ``text`` (trailing whitespace aside); None if not."""
    try:
        value, end = _DECODER.raw_decode(text.strip())
    except json.JSONDecodeError:
        return None
    if text.strip()[end:].strip():
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_from_object(v) for v in items]
    return calls if calls and all(calls) else None


def parse_hermes(text: str) -> tuple[str, list[dict]]:
    calls, kept, pos = [], [], 0
    for m in re.finditer(r'<tool_call>(.*?)(?:</tool_call>|$)', text, re.S):
        found = _calls_from_json(m.group(1))
        if found is None:
            continue  # not a call: leave it in the content
        calls += found
        kept.append(text[pos:m.start()])
        pos = m.end()
    kept.append(text[pos:])
    return ''.join(kept).strip(), calls


def parse_llama3_json(text: str) -> tuple[str, list[dict]]:
    body = re.sub(r'(<\|eot_id\|>|<\|eom_id\|>)\s*$', '', text.strip()).strip()
    if body.startswith('<|python_tag|>'):
        body = body[len('<|python_tag|>'):].strip()
    if not body.startswith(('{', '[')):
        return text.strip(), []
    calls = _calls_from_json(body)
    if calls is None:  # several objects separated by ';'
        parts = [_calls_from_json(p) for p in body.split(';') if p.strip()]
        calls = [c for p in parts for c in p] if parts and all(parts) else None
    return ('', calls) if calls else (text.strip(), [])


def parse_mistral(text: str) -> tuple[str, list[dict]]:
    head, sep, rest = text.partition('[TOOL_CALLS]')
    if not sep:
        return text.strip(), []
    rest = rest.strip()
    if rest.startswith('['):  # [TOOL_CALLS] [{...}, ...]
        try:
            value, _ = _DECODER.raw_decode(rest)
        except json.JSONDecodeError:
            return text.strip(), []
        calls = [_from_object(v) for v in (value if isinstance(value, list) else [value])]
        return (head.strip(), calls) if calls and all(calls) else (text.strip(), [])
    calls = []  # [TOOL_CALLS]name[ARGS]{...}[TOOL_CALLS]name2[ARGS]{...}
    for chunk in re.split(r'\[TOOL_CALLS\]', rest):
        name, _, args = chunk.partition('[ARGS]')
        try:
            value, _ = _DECODER.raw_decode(args.strip())
        except json.JSONDecodeError:
            return text.strip(), []
        calls.append(make_call(name.strip(), value))
    return head.strip(), calls


def parse_deepseek(text: str) -> tuple[str, list[dict]]:
    head = re.split(r'<｜tool▁calls▁begin｜>|<｜tool▁call▁begin｜>', text, maxsplit=1)[0]
    calls = []
    for m in re.finditer(r'<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)(?:<｜tool▁call▁end｜>|$)', text, re.S):
        kind, body = m.group(1).strip(), m.group(2)
        fenced = re.match(r'\s*([^\n]+)\n```(?:json)?\n(.*?)\n?```', body, re.S)
        name, args = (fenced.group(1).strip(), fenced.group(2)) if fenced else (kind, body)
        try:
            value, _ = _DECODER.raw_decode(args.strip())
        except json.JSONDecodeError:
            return text.strip(), []
        calls.append(make_call(name, value))
    return (head.strip(), calls) if calls else (text.strip(), [])


def parse_granite(text: str) -> tuple[str, list[dict]]:
    head, sep, rest = text.partition('<|tool_call|>')
    calls = _calls_from_json(rest) if sep else None
    return (head.strip(), calls) if calls else (text.strip(), [])


def parse_harmony(text: str) -> tuple[str, list[dict]]:
    calls = []
    for m in re.finditer(r'to=functions\.([\w.\-]+).*?<\|message\|>(.*?)(?:<\|call\|>|$)', text, re.S):
        try:
            value, _ = _DECODER.raw_decode(m.group(2).strip())
        except json.JSONDecodeError:
            return text.strip(), []
        calls.append(make_call(m.group(1), value))
    final = re.search(r'<\|channel\|>final<\|message\|>(.*?)(?:<\|return\|>|<\|end\|>|$)', text, re.S)
    if final:
        content = final.group(1)
    elif '<|channel|>' in text or calls:
        content = ''  # only analysis/commentary: no user-facing text
    else:
        content = text
    return content.strip(), calls


def split_reasoning(text: str) -> tuple[str, str]:
    """``(reasoning, answer)``: a leading ``<think>...</think>`` block split off the answer — or the text up to
    ``</think>`` when the prompt itself opened ``<think>`` (DeepSeek-R1). ``('', text)`` when there is none."""
    m = re.match(r'\s*(?:<think>)?(.*?)</think>\s*', text, re.S)
    if not m:
        return '', text
    return m.group(1).strip(), text[m.end():]


PARSERS = {'hermes': parse_hermes, 'llama3_json': parse_llama3_json, 'mistral': parse_mistral,
           'deepseek': parse_deepseek, 'granite': parse_granite, 'harmony': parse_harmony}


def parse_tool_calls(text: str, template_or_tokenizer=None, fmt: str | None = None) -> tuple[str, list[dict]]:
    """``(content, tool_calls)`` from a generated answer; ``tool_calls`` is [] when it holds none.

    template_or_tokenizer: a tokenizer (its chat_template is read) or a chat template string; ignored when ``fmt``
    (a key of `PARSERS`) is given. With no known format the text is all content.
    """
    if fmt is None:
        template = getattr(template_or_tokenizer, 'chat_template', template_or_tokenizer)
        fmt = detect_format(template if isinstance(template, (str, dict)) else None)
    if fmt is None:
        return text.strip(), []
    if fmt not in PARSERS:
        raise ValueError(f'unknown tool-call format {fmt!r}; known: {", ".join(PARSERS)}')
    return PARSERS[fmt](text)
