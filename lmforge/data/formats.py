"""Detect a row's format and normalise it to one schema: ``{"messages": [...], "tools": ...}`` or ``{"text": ...}``.

Formats: OpenAI messages; ShareGPT (conversations/from/value); Alpaca (instruction/input/output/system/history);
query/response/history (with aliases prompt/question -> query, answer/output/completion -> response); plain text.
Every problem is a `RowError` naming the field; the caller adds the file and row number.
"""
from __future__ import annotations

ROLE_ALIASES = {'human': 'user', 'user': 'user', 'gpt': 'assistant', 'assistant': 'assistant', 'bot': 'assistant',
                'model': 'assistant', 'system': 'system', 'tool': 'tool', 'function': 'tool', 'observation': 'tool',
                'function_call': 'assistant'}
ROLES = ('system', 'user', 'assistant', 'tool')
QUERY_KEYS = ('query', 'prompt', 'question', 'instruction', 'input')
RESPONSE_KEYS = ('response', 'answer', 'output', 'completion', 'chosen')


class RowError(ValueError):
    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f'{field}: {problem}')


def rename_columns(row: dict, columns: dict | None) -> dict:
    if not columns:
        return row
    return {columns.get(k, k): v for k, v in row.items()}


def normalize(row: dict, mode: str = 'sft') -> dict:
    """One row -> ``{'messages': [...]}`` (sft; ``infer``: the last message may be the user's) or ``{'text': str}``
    (pt)."""
    if '__error__' in row:
        raise RowError('row', row['__error__'])
    if mode == 'pt':
        return {'text': _text(row)}
    if 'messages' in row:
        messages = parse_messages(row['messages'], 'messages', 'role', 'content')
    elif 'conversations' in row:
        messages = parse_messages(row['conversations'], 'conversations', 'from', 'value')
    else:
        messages = _query_response(row)
    if row.get('system') and (not messages or messages[0]['role'] != 'system'):
        messages.insert(0, {'role': 'system', 'content': _string(row['system'], 'system')})
    check_conversation(messages, require_answer=mode != 'infer')
    out = {'messages': messages}
    if row.get('tools'):
        out['tools'] = _tools(row['tools'])
    return out


def _text(row: dict) -> str:
    for key in ('text', 'content', 'document'):
        if key in row:
            return _string(row[key], key, allow_empty=False)
    if 'messages' in row:  # pt on chat data: the conversation's text
        return '\n'.join(_string(m.get('content'), 'messages.content') for m in row['messages'])
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
    if not isinstance(items, list):
        raise RowError(field, f'expected a list of messages, got {type(items).__name__}')
    out = []
    for j, m in enumerate(items):
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
        if content is None and not (mapped == 'assistant' and m.get('tool_calls')):
            raise RowError(where, f'missing "{content_key}"')
        if content is not None and not isinstance(content, (str, list)):
            raise RowError(f'{where}.{content_key}', f'expected a string, got {type(content).__name__}')
        msg['content'] = content if content is not None else ''
        out.append(msg)
    return out


def _query_response(row: dict) -> list[dict]:
    query_key = next((k for k in QUERY_KEYS if k in row and k != 'input'), None)
    response_key = next((k for k in RESPONSE_KEYS if k in row), None)
    if query_key is None and 'input' in row:
        query_key = 'input'
    if query_key is None or response_key is None:
        missing = 'a query/instruction/prompt column' if query_key is None else 'a response/output/answer column'
        raise RowError('row', f'unrecognised format: no "messages" or "conversations", and {missing} is missing '
                              f'(columns: {", ".join(sorted(row)) or "none"}); map columns with --columns')
    query = _string(row[query_key], query_key, allow_empty=False)
    if query_key == 'instruction' and row.get('input'):  # alpaca
        query = f"{query}\n{_string(row['input'], 'input')}"
    messages = []
    for j, pair in enumerate(row.get('history') or []):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError(f'history[{j}]', 'expected a [query, response] pair')
        messages += [{'role': 'user', 'content': _string(pair[0], f'history[{j}][0]')},
                     {'role': 'assistant', 'content': _string(pair[1], f'history[{j}][1]')}]
    messages += [{'role': 'user', 'content': query},
                 {'role': 'assistant', 'content': _string(row[response_key], response_key)}]
    return messages


def _tools(tools):
    if isinstance(tools, str):
        import json
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise RowError('tools', f'not valid JSON: {e.msg}') from None
    if not isinstance(tools, list):
        raise RowError('tools', f'expected a list of tool schemas, got {type(tools).__name__}')
    return tools


def check_conversation(messages: list[dict], require_answer: bool = True) -> None:
    """Order rules every chat template relies on: optional system first, then a user turn before any answer."""
    if not messages:
        raise RowError('messages', 'is empty')
    body = messages[1:] if messages[0]['role'] == 'system' else messages
    for j, m in enumerate(body):
        if m['role'] == 'system':
            raise RowError(f'messages[{messages.index(m)}].role', 'a system message is only allowed first')
    if not body:
        raise RowError('messages', 'holds only a system message')
    if body[0]['role'] == 'assistant':
        raise RowError('messages', 'the first non-system message is from the assistant; a user turn must come first')
    if not require_answer:
        return
    if not any(m['role'] == 'assistant' for m in body):
        raise RowError('messages', 'has no assistant message to train on')
    if body[-1]['role'] != 'assistant':
        raise RowError('messages', f'ends with a {body[-1]["role"]} message; the last message must be the '
                                   'assistant\'s answer')
