"""POST /v1/chat/completions: messages through the model's chat template, plain or streamed, tool calls parsed by
the templates' parsers."""
from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from lmforge.errors import TemplateError
from lmforge.serve.generation import (MAX_LOGPROBS, Generation, check, generation_error, request_config, row_configs,
                                      sse, streaming, token_budget, usage)
from lmforge.serve.protocol import ApiError, ChatCompletionRequest

if TYPE_CHECKING:
    from lmforge.serve.app import ServerState


ROLES = {'system': 'system', 'developer': 'system', 'user': 'user', 'assistant': 'assistant', 'tool': 'tool'}
MAX_DEPTH = 64  # of the JSON the template renders (tools, call arguments): deeper would exhaust its recursion


def check_depth(value, param: str) -> None:
    stack = [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            check(depth <= MAX_DEPTH, param, f'is nested more than {MAX_DEPTH} levels deep')
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))


def chat_messages(req: ChatCompletionRequest) -> list[dict]:
    """The request's messages as the chat template takes them."""
    check(bool(req.messages), 'messages', 'must hold at least one message')
    out = []
    for i, m in enumerate(req.messages):
        role = ROLES.get(m.role)
        check(role is not None, f'messages.{i}.role', f'unknown role {m.role!r}; use one of {", ".join(ROLES)}')
        msg = {'role': role, 'content': _text_content(m.content, i, optional=role == 'assistant')}
        if m.tool_calls:
            check(role == 'assistant', f'messages.{i}.tool_calls', 'only assistant messages have tool calls')
            msg['tool_calls'] = [_template_call(c, i, k) for k, c in enumerate(m.tool_calls)]
        if role == 'tool':
            check(m.tool_call_id is not None, f'messages.{i}.tool_call_id',
                  'is required in a "tool" message: the id of the call it answers')
            msg['tool_call_id'] = m.tool_call_id
            if m.name:
                msg['name'] = m.name
        if m.reasoning_content:
            msg['reasoning_content'] = m.reasoning_content
        out.append(msg)
    return out


def _text_content(content, i: int, optional: bool) -> str:
    if content is None:
        check(optional, f'messages.{i}.content', 'is required')
        return ''
    if isinstance(content, str):
        return content
    check(bool(content) or optional, f'messages.{i}.content', 'must not be an empty list of parts')
    texts = []
    for j, part in enumerate(content):
        check(part.type == 'text' and part.text is not None, f'messages.{i}.content.{j}',
              f'only text parts are supported by this model (got type {part.type!r})')
        texts.append(part.text)
    return '\n'.join(texts)


def _template_call(call: dict, i: int, k: int) -> dict:
    """An OpenAI tool call with its JSON-string arguments parsed, as chat templates expect them (a mapping: a string
    that is not a JSON object would be rendered as a quoted string, or break the template)."""
    fn = call.get('function') if isinstance(call, dict) else None
    check(isinstance(fn, dict) and isinstance(fn.get('name'), str), f'messages.{i}.tool_calls',
          'each call needs {"function": {"name": ..., "arguments": ...}}')
    args = fn.get('arguments')
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            pass
    check(args is None or isinstance(args, dict), f'messages.{i}.tool_calls.{k}.function.arguments',
          'must be a JSON object, as a string (what a tool call\'s arguments are)')
    check_depth(args, f'messages.{i}.tool_calls.{k}.function.arguments')
    return {'id': call.get('id'), 'type': 'function', 'function': {'name': fn['name'], 'arguments': args or {}}}


def chat_tools(req: ChatCompletionRequest) -> list | None:
    """The tools to render (None when there are none or tool_choice is "none")."""
    names = set()
    for k, tool in enumerate(req.tools or []):
        fn = tool.get('function')
        check(tool.get('type', 'function') == 'function' and isinstance(fn, dict) and isinstance(fn.get('name'), str),
              f'tools.{k}', 'each tool is {"type": "function", "function": {"name": ..., "parameters": ...}}')
        check(bool(fn['name']), f'tools.{k}.function.name', 'must not be empty')
        check(isinstance(fn.get('parameters', {}), dict), f'tools.{k}.function.parameters',
              'must be a JSON Schema object')
        check_depth(tool, f'tools.{k}')
        names.add(fn['name'])
    choice = req.tool_choice
    if isinstance(choice, dict):
        check_depth(choice, 'tool_choice')
        fn = choice.get('function')
        name = fn.get('name') if isinstance(fn, dict) else None
        check(isinstance(name, str), 'tool_choice', 'a named choice is {"type": "function", "function": {"name": ...}}')
        check(name in names, 'tool_choice', f'names the tool {name!r}, which is not in tools')
    if isinstance(choice, dict) or choice not in (None, 'auto', 'none'):
        raise ApiError(400, f'tool_choice {json.dumps(choice)} is not supported by this engine (it cannot force a '
                            'call); use "auto" or "none".', param='tool_choice', code='unsupported_value')
    fmt = (req.response_format or {}).get('type', 'text')
    check(fmt == 'text', 'response_format', f'type {fmt!r} is not supported by this engine; only "text"')
    if not req.tools or choice == 'none':
        return None
    return req.tools


def parse_tool_calls(text: str, tokenizer) -> tuple[str | None, list]:
    """(content, tool_calls) of an answer, by the templates' parser for the model's tool-call format."""
    from lmforge.templates import parse_tool_calls as parse

    content, calls = parse(text, tokenizer)
    return ((content or None), calls) if calls else (text, [])


def chat_prompt(engine, messages: list[dict], tools: list | None) -> list[int]:
    from lmforge.infer.engine import InferRequest
    from lmforge.templates.encode import check_template_support

    try:
        check_template_support(engine.tokenizer, messages, tools)
        return engine.prompt_ids(InferRequest(messages=messages, tools=tools))
    except TemplateError as e:
        raise ApiError(400, str(e), param='messages', code='template_error') from None


def content_logprobs(engine, entries: list) -> list:
    """The entries of the message's own tokens: the end-of-turn token that ended it is left out (it is no part of
    ``content``, and OpenAI's chat logprobs cover the content), unlike /v1/completions' legacy logprobs."""
    return [e for e in entries if e.token_id not in engine.stop_ids]


def chat_logprobs(engine, entries: list) -> dict:
    def one(token_id, logprob):
        text = engine.token_text(token_id)
        return {'token': text, 'logprob': logprob, 'bytes': list(text.encode('utf-8'))}
    return {'content': [{**one(e.token_id, e.logprob), 'top_logprobs': [one(t, lp) for t, lp in e.top]}
                        for e in content_logprobs(engine, entries)]}


async def chat(state: ServerState, req: ChatCompletionRequest, request=None):
    name, adapter = state.resolve_model(req.model)
    messages = chat_messages(req)
    tools = chat_tools(req)
    if req.top_logprobs is not None:
        check(req.logprobs, 'top_logprobs', 'needs logprobs: true')
        check(0 <= req.top_logprobs <= MAX_LOGPROBS, 'top_logprobs', f'must be in [0, {MAX_LOGPROBS}]')
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    slot = state.acquire()
    try:
        prompt = await run_in_threadpool(chat_prompt, state.engine, messages, tools)
        max_new = token_budget(state, len(prompt), requested, 'messages')
        config = request_config(state, req, max_new, req.logprobs, req.top_logprobs or 0)
        gen = Generation(state, [prompt] * req.n, row_configs(config, req.n), adapter)
    except BaseException:
        slot.release()
        raise
    meta = {'id': f'chatcmpl-{uuid.uuid4().hex}', 'created': int(time.time()), 'model': name}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return streaming(chat_stream(state, gen, meta, len(prompt), tools is not None, req.logprobs, include_usage),
                         slot, gen)
    try:
        rows = await gen.wait(request)
    finally:
        slot.release()
    choices = []
    for row in rows:
        content, calls = parse_tool_calls(row.text, state.engine.tokenizer) if tools else (row.text, [])
        message = {'role': 'assistant', 'content': content}
        if calls:
            message['tool_calls'] = calls
        choices.append({'index': row.index, 'message': message,
                        'logprobs': chat_logprobs(state.engine, row.logprobs) if req.logprobs else None,
                        'finish_reason': 'tool_calls' if calls else row.finish_reason})
    return {**meta, 'object': 'chat.completion', 'choices': choices,
            'usage': usage(len(prompt), sum(len(r.token_ids) for r in rows))}


async def chat_stream(state: ServerState, gen: Generation, meta: dict, n_prompt: int, tools: bool, logprobs: bool,
                      include_usage: bool):
    """SSE chunks: the role, then text as it comes (with tools: the whole answer once parsed, since a call is only
    known complete at the end), a finish chunk per choice, the usage chunk if asked, and [DONE]."""
    base = {**meta, 'object': 'chat.completion.chunk'}
    extra = {'usage': None} if include_usage else {}

    def chunk(index, delta, finish=None, lps=None):
        return sse({**base, 'choices': [{'index': index, 'delta': delta, 'logprobs': lps, 'finish_reason': finish}],
                    **extra})

    for row in gen.rows:
        yield chunk(row.index, {'role': 'assistant', 'content': ''})
    async for row, delta, lps, finish in gen.events():
        if finish == 'error':
            yield sse(generation_error(row.error).body())
            break
        if tools:
            if finish is None:
                continue
            content, calls = parse_tool_calls(row.text, state.engine.tokenizer)
            if calls:
                delta_calls = [{'index': k, **call} for k, call in enumerate(calls)]
                yield chunk(row.index, {'content': content, 'tool_calls': delta_calls} if content else
                            {'tool_calls': delta_calls})
                yield chunk(row.index, {}, 'tool_calls')
                continue
            delta, lps = row.text, row.logprobs
        if logprobs:
            lps = content_logprobs(state.engine, lps)
        if delta or (logprobs and lps):
            yield chunk(row.index, {'content': delta}, lps=chat_logprobs(state.engine, lps) if logprobs else None)
        if finish is not None:
            yield chunk(row.index, {}, finish)
    else:
        if include_usage:
            yield sse({**base, 'choices': [], 'usage': usage(n_prompt, sum(len(r.token_ids) for r in gen.rows))})
    yield 'data: [DONE]\n\n'
