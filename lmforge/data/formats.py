"""Detect a row's format and normalise it to one schema.

Formats (`detect_format`): OpenAI ``messages`` (also ``conversation``); ShareGPT ``conversations`` with
``from``/``value`` (human/gpt/system/function_call/observation mapped to roles); Alpaca
(instruction/input/output/system/history); query/response/history with common aliases (prompt, question, input,
problem -> query; answer, output, completion, target, solution -> response; system_prompt -> system); plain text
(``text``, for pt); preference (``chosen``/``rejected`` as strings or message lists, ``prompt`` + ``chosen`` +
``rejected``, or ``messages`` + ``rejected_response``/``rejected_messages``); KTO (a boolean ``label``).
``--columns '{"src": "dst"}'`` renames columns first (`rename_columns`).

The schema (`normalize`): ``{"messages": [...]}`` plus, when present, ``tools``, ``images``, ``videos``,
``audios``, ``rejected_messages`` (the same conversation ending in the rejected answer) and ``label`` (KTO);
or ``{"text": str}`` in pt mode. Every problem is a `RowError` naming the field; the caller adds the file and row.
"""
from __future__ import annotations

import json
import os

ROLE_ALIASES = {'human': 'user', 'user': 'user', 'gpt': 'assistant', 'assistant': 'assistant', 'bot': 'assistant',
                'model': 'assistant', 'chatgpt': 'assistant', 'system': 'system', 'tool': 'tool',
                'function': 'tool', 'observation': 'tool', 'ipython': 'tool', 'function_call': 'assistant'}
ROLES = ('system', 'user', 'assistant', 'tool')
_PLAIN_ROLES = frozenset(('system', 'user', 'assistant', 'human', 'gpt'))  # need no check beyond the fast path's
QUERY_KEYS = ('query', 'prompt', 'question', 'instruction', 'problem', 'input')
RESPONSE_KEYS = ('response', 'answer', 'output', 'completion', 'target', 'targets', 'solution', 'chosen')
SYSTEM_KEYS = ('system', 'system_prompt')
MESSAGE_KEYS = ('messages', 'conversation', 'conversations')
MEDIA = {'images': ('images', 'image'), 'videos': ('videos', 'video'), 'audios': ('audios', 'audio')}
MEDIA_TAGS = {'images': '<image>', 'videos': '<video>', 'audios': '<audio>'}
FORMATS = ('messages', 'sharegpt', 'alpaca', 'query-response', 'preference', 'kto', 'text')


class RowError(ValueError):
    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f'{field}: {problem}')


def rename_columns(row: dict, columns: dict | None) -> dict:
    if not columns:
        return row
    return {columns.get(k, k): v for k, v in row.items()}


def detect_format(row: dict) -> str:
    """The name of a row's format (one of `FORMATS`), or 'unknown'."""
    if 'label' in row and any(k in row for k in (*MESSAGE_KEYS, *QUERY_KEYS, 'completion')):
        return 'kto'
    if 'chosen' in row and 'rejected' in row or 'rejected_response' in row or 'rejected_messages' in row:
        return 'preference'
    key = next((k for k in MESSAGE_KEYS if k in row), None)
    if key is not None:
        items = row[key]
        if key == 'conversations' or (isinstance(items, list) and items and isinstance(items[0], dict)
                                      and 'from' in items[0]):
            return 'sharegpt'
        return 'messages'
    if 'instruction' in row and any(k in row for k in RESPONSE_KEYS):
        return 'alpaca'
    if any(k in row for k in QUERY_KEYS) and any(k in row for k in RESPONSE_KEYS):
        return 'query-response'
    if any(k in row for k in ('text', 'content', 'document')):
        return 'text'
    return 'unknown'


def normalize(row: dict, mode: str = 'sft', base_dir: str | None = None) -> dict:
    """One row -> the internal schema.

    ``mode``: ``sft`` (a conversation ending in an assistant answer; preference rows train on the chosen answer,
    KTO rows only when their label is true), ``infer`` (the last message may be the user's) or ``pt``
    (``{'text': str}``). Preference and KTO rows keep ``rejected_messages`` / ``label`` (their row formats are
    `lmforge.data.preference`'s, shared with `lmforge rlhf`). ``base_dir``: where relative image/video/audio paths are
    looked up (the data file's folder), besides the working directory.
    """
    if '__error__' in row:
        raise RowError('row', row['__error__'])
    if mode == 'pt':
        return {'text': _text(row)}
    kind = detect_format(row)
    if kind == 'text':
        raise RowError('row', 'a plain-text row (only a "text" column) has no conversation: train it with '
                              '`lmforge pt`, or map its columns to messages/query/response with --columns')
    out = {}
    if kind in ('preference', 'kto'):
        out.update(_preference(row))
    else:
        out['messages'] = _conversation(row)
    check_conversation(out['messages'], require_answer=mode != 'infer')
    if 'rejected_messages' in out:
        check_conversation(out['rejected_messages'], require_answer=True, field='rejected')
    if mode == 'sft' and out.get('label') is False:
        raise RowError('label', 'false: sft does not train on an undesirable (KTO label false) answer; use '
                                '`lmforge rlhf --rlhf_type kto` for KTO data (rows with label true are trained)')
    if row.get('tools'):
        out['tools'] = _tools(row['tools'])
    for name, keys in MEDIA.items():
        key = next((k for k in keys if row.get(k) is not None), None)
        if key is not None:
            files = _media(row[key], key, base_dir)
            if files:
                out[name] = files
                _check_media_tags(out, name, files)
    return out


# --------------------------------------------------------------------------- conversations

def _conversation(row: dict) -> list[dict]:
    key = next((k for k in MESSAGE_KEYS if k in row), None)
    if key is not None:
        items = row[key]
        sharegpt = isinstance(items, list) and items and isinstance(items[0], dict) and 'from' in items[0]
        messages = (parse_messages(items, key, 'from', 'value') if key == 'conversations' or sharegpt
                    else parse_messages(items, key, 'role', 'content'))
    else:
        messages = _query_response(row)
    return _with_system(row, messages)


def _with_system(row: dict, messages: list[dict]) -> list[dict]:
    key = next((k for k in SYSTEM_KEYS if row.get(k)), None)
    if key is not None and (not messages or messages[0]['role'] != 'system'):
        messages.insert(0, {'role': 'system', 'content': _string(row[key], key)})
    return messages


def _text(row: dict) -> str:
    for key in ('text', 'content', 'document'):
        if key in row:
            return _string(row[key], key, allow_empty=False)
    for key in MESSAGE_KEYS:
        if key in row:  # pt on chat data: the conversation's text
            items = row[key]
            if not isinstance(items, list):
                raise RowError(key, f'expected a list of messages, got {type(items).__name__}')
            content = 'value' if key == 'conversations' else 'content'
            return '\n'.join(_string(m.get(content) if isinstance(m, dict) else m, f'{key}[{j}].{content}')
                             for j, m in enumerate(items))
    raise RowError('text', f'missing: pt needs a "text" column (found {", ".join(sorted(row)) or "none"})')


def _string(value, field: str, allow_empty: bool = True) -> str:
    if value is None:
        raise RowError(field, 'is null')
    if not isinstance(value, str):
        raise RowError(field, f'expected a string, got {type(value).__name__}')
    if not allow_empty and not value.strip():
        raise RowError(field, 'is empty')
    return value


def parse_messages(items, field: str, role_key: str, content_key: str) -> list[dict]:
    if isinstance(items, str):
        try:  # some hub datasets store the conversation as a JSON string
            items = json.loads(items)
        except json.JSONDecodeError:
            raise RowError(field, 'expected a list of messages, got a string that is not JSON') from None
    if not isinstance(items, list):
        raise RowError(field, f'expected a list of messages, got {type(items).__name__}')
    out = []
    for j, m in enumerate(items):
        if type(m) is dict and len(m) == 2 and role_key in m and content_key in m:  # the common case, fast
            role, content = m[role_key], m[content_key]
            if role in _PLAIN_ROLES and type(content) is str and (role == 'system' or content.strip()):
                out.append({'role': ROLE_ALIASES[role], 'content': content})
                continue
        where = f'{field}[{j}]'
        if not isinstance(m, dict):
            raise RowError(where, f'expected an object, got {type(m).__name__}')
        role = m.get(role_key, m.get('role'))
        if role is None:
            raise RowError(where, f'missing "{role_key}"')
        mapped = ROLE_ALIASES.get(str(role).lower())
        if mapped is None:
            raise RowError(f'{where}.{role_key}', f'unknown role {role!r}; expected one of {", ".join(ROLES)}')
        msg = {k: v for k, v in m.items() if k not in (role_key, content_key, 'role', 'content')}
        msg['role'] = mapped
        content = m.get(content_key, m.get('content'))
        if msg.get('tool_calls') is not None:
            _check_tool_calls(msg['tool_calls'], f'{where}.tool_calls')
        if content is None and not (mapped == 'assistant' and msg.get('tool_calls')):
            raise RowError(where, f'missing "{content_key}"' if content_key not in m and 'content' not in m
                           else f'"{content_key}" is null')
        if content is not None:
            _check_content(content, f'{where}.{content_key}')
            if mapped in ('user', 'assistant') and isinstance(content, str) and not content.strip() \
                    and not msg.get('tool_calls'):
                raise RowError(f'{where}.{content_key}', f'is empty (an empty {mapped} message)')
        if 'loss' in msg and not isinstance(msg['loss'], bool) and msg['loss'] is not None:
            raise RowError(f'{where}.loss', f'expected true or false, got {msg["loss"]!r}')
        msg['content'] = content if content is not None else ''
        out.append(msg)
    return out


def _check_content(content, field: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise RowError(field, f'expected a string, got {type(content).__name__}')
    for k, part in enumerate(content):  # OpenAI content parts
        if not isinstance(part, dict) or 'type' not in part:
            raise RowError(f'{field}[{k}]', 'expected a content part {"type": ..., ...}')
        if part['type'] == 'text' and not isinstance(part.get('text'), str):
            raise RowError(f'{field}[{k}].text', 'expected a string')


def _check_tool_calls(calls, field: str) -> None:
    if not isinstance(calls, list):
        raise RowError(field, f'expected a list of tool calls, got {type(calls).__name__}')
    for k, call in enumerate(calls):
        if not isinstance(call, dict):
            raise RowError(f'{field}[{k}]', f'expected an object, got {type(call).__name__}')
        fn = call.get('function', call)
        if not isinstance(fn, dict) or not isinstance(fn.get('name'), str) or not fn['name']:
            raise RowError(f'{field}[{k}]', 'missing the function name')
        args = fn.get('arguments')
        if isinstance(args, str):
            try:
                json.loads(args)
            except json.JSONDecodeError as e:
                raise RowError(f'{field}[{k}].arguments', f'not valid JSON: {e.msg}') from None


def _query_key(row: dict) -> str | None:
    key = next((k for k in QUERY_KEYS if k in row and k != 'input'), None)
    return key if key is not None or 'input' not in row else 'input'


def _query_response(row: dict, response_key: str | None = None) -> list[dict]:
    query_key = _query_key(row)
    response_key = response_key or next((k for k in RESPONSE_KEYS if k in row), None)
    if query_key is None or response_key is None:
        missing = 'a query/instruction/prompt column' if query_key is None else 'a response/output/answer column'
        raise RowError('row', f'unrecognised format: no "messages" or "conversations", and {missing} is missing '
                              f'(columns: {", ".join(sorted(row)) or "none"}); map columns with --columns')
    return _prompt_messages(row, query_key) + [
        {'role': 'assistant', 'content': _string(row[response_key], response_key, allow_empty=False)}]


def _prompt_messages(row: dict, query_key: str) -> list[dict]:
    query = _string(row[query_key], query_key, allow_empty=False)
    if query_key == 'instruction' and row.get('input'):  # alpaca
        query = f"{query}\n{_string(row['input'], 'input')}"
    history = row.get('history') or []
    if isinstance(history, str):
        try:
            history = json.loads(history)
        except json.JSONDecodeError:
            raise RowError('history', 'expected a list of [query, response] pairs, got a string that is not '
                                      'JSON') from None
    if not isinstance(history, list):
        raise RowError('history', f'expected a list of [query, response] pairs, got {type(history).__name__}')
    messages = []
    for j, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError(f'history[{j}]', 'expected a [query, response] pair')
        messages += [{'role': 'user', 'content': _string(pair[0], f'history[{j}][0]', allow_empty=False)},
                     {'role': 'assistant', 'content': _string(pair[1], f'history[{j}][1]', allow_empty=False)}]
    return messages + [{'role': 'user', 'content': query}]


# --------------------------------------------------------------------------- preference and KTO

def _preference(row: dict) -> dict:
    """A preference row -> ``messages`` (ending with the chosen answer) + ``rejected_messages``; a KTO row ->
    ``messages`` + ``label``. The row formats are `lmforge.data.preference`'s (shared with `lmforge rlhf`)."""
    try:
        from lmforge.data.preference import normalize_preference
    except ImportError:  # pragma: no cover - the rlhf data module ships with lmforge
        raise RowError('row', 'a preference/KTO row (chosen/rejected or label): these rows are handled by '
                              '`lmforge rlhf`') from None
    item = normalize_preference(row)
    if 'label' in item:
        return {'messages': item['prompt'] + [item['completion']], 'label': item['label']}
    return {'messages': item['prompt'] + [item['chosen']], 'rejected_messages': item['prompt'] + [item['rejected']]}


# --------------------------------------------------------------------------- tools and media

def _tools(tools):
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise RowError('tools', f'not valid JSON: {e.msg}') from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise RowError('tools', f'expected a list of tool schemas, got {type(tools).__name__}')
    for k, t in enumerate(tools):
        if not isinstance(t, dict):
            raise RowError(f'tools[{k}]', f'expected a tool schema object, got {type(t).__name__}')
    return tools


def _media(value, key: str, base_dir: str | None) -> list:
    items = value if isinstance(value, list) else [value]
    out = []
    for k, item in enumerate(items):
        where = f'{key}[{k}]'
        if isinstance(item, dict):  # the `datasets` Image/Audio feature: {'bytes': ..., 'path': ...}
            if item.get('bytes') is None and not item.get('path') and item.get('array') is None:
                raise RowError(where, 'an object with neither "bytes" nor "path"')
            out.append(item)
            continue
        if not isinstance(item, str):
            if type(item).__module__.startswith('PIL'):
                out.append(item)
                continue
            raise RowError(where, f'expected a file path or URL, got {type(item).__name__}')
        if not item.strip():
            raise RowError(where, 'is empty')
        if item.startswith(('http://', 'https://', 'data:', 's3://', 'oss://')):
            out.append(item)
            continue
        path = os.path.expanduser(item)
        found = next((p for p in ([os.path.join(base_dir, path)] if base_dir and not os.path.isabs(path) else [])
                      + [path] if os.path.isfile(p)), None)
        if found is None:
            raise RowError(where, f'file not found: {item}')
        out.append(found)
    return out


def _check_media_tags(out: dict, name: str, files: list) -> None:
    tag = MEDIA_TAGS[name]
    n = sum(m['content'].count(tag) for m in out['messages'] if isinstance(m.get('content'), str))
    if n and n != len(files):
        raise RowError(name, f'{n} {tag} tags in the messages but {len(files)} {name[:-1]} file(s)')


# --------------------------------------------------------------------------- order rules

def check_conversation(messages: list[dict], require_answer: bool = True, field: str = 'messages') -> None:
    """Order rules every chat template relies on: optional system first, then a user turn; user and assistant
    alternate; a tool result follows an assistant turn; the conversation ends with the assistant's answer."""
    if not messages:
        raise RowError(field, 'is empty')
    offset = 1 if messages[0]['role'] == 'system' else 0
    body = messages[offset:]
    for j, m in enumerate(body):
        if m['role'] == 'system':
            raise RowError(f'{field}[{j + offset}].role', 'a system message is only allowed first')
    if not body:
        raise RowError(field, 'holds only a system message')
    if body[0]['role'] != 'user':
        raise RowError(field, f'the first non-system message is from the {body[0]["role"]}; a user turn must come '
                              'first')
    for j in range(1, len(body)):
        prev, role = body[j - 1]['role'], body[j]['role']
        where = f'{field}[{j + offset}].role'
        if role == prev and role in ('user', 'assistant'):
            raise RowError(where, f'wrong role order: two {role} messages in a row (messages {j + offset - 1} '
                                  f'and {j + offset})')
        if role == 'tool' and prev not in ('assistant', 'tool'):
            raise RowError(where, f'wrong role order: a tool result after a {prev} message (it must follow the '
                                  'assistant turn that called the tool)')
    if not require_answer:
        return
    if not any(m['role'] == 'assistant' for m in body):
        raise RowError(field, 'has no assistant message to train on')
    if body[-1]['role'] != 'assistant':
        raise RowError(field, f'ends with a {body[-1]["role"]} message; the last message must be the '
                              'assistant\'s answer')
