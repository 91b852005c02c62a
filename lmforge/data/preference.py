"""Preference, KTO and prompt-only rows -> one schema each, with a `RowError` naming the field for every bad row.

Paired rows (dpo, orpo, simpo, cpo, rm) become ``{"prompt": [messages], "chosen": message, "rejected": message}``,
where ``prompt`` is the conversation up to the answer and ``chosen``/``rejected`` are assistant messages. Accepted:

- TRL explicit prompt: ``prompt`` (text or messages) + ``chosen`` + ``rejected`` (text, a message or a one-message
  list);
- TRL implicit prompt: ``chosen`` and ``rejected`` as whole conversations sharing the prompt turns;
- ms-swift: ``messages`` (or ShareGPT ``conversations``) ending with the chosen answer + ``rejected_response`` (or
  ``rejected_messages``, a whole conversation with the same prompt);
- ms-swift: ``query``/``response``/``rejected_response`` (+ ``history``, ``system``; the aliases of the SFT
  formats: prompt/question/instruction, answer/output/chosen).

KTO rows (a ``label`` column: true = desirable) become ``{"prompt": [messages], "completion": message, "label":
bool}``: TRL's prompt + completion + label, or any of the formats above with the answer as the completion
(messages ending with the answer, query/response). A paired row given to kto becomes two KTO rows.

Prompt rows (grpo, ppo) become ``{"prompt": [messages], "extra": {column: value}}``: messages ending with a user
turn, or query/prompt text. A final assistant answer is dropped from the prompt and kept as ``solution`` when the row
has none (the accuracy reward compares against ``solution``); every other column reaches the reward functions.
"""
from __future__ import annotations

from lmforge.data.formats import (MESSAGE_KEYS, QUERY_KEYS, SYSTEM_KEYS, RowError, _query_response, _string, _tools,
                                  check_conversation, parse_messages)

REJECTED_KEYS = ('rejected_response', 'rejected')
# Columns that make up the conversation itself; everything else in a prompt row is an extra for reward functions
# (``solution`` above all).
FORMAT_KEYS = {*MESSAGE_KEYS, *QUERY_KEYS, *SYSTEM_KEYS, 'history', 'tools', 'response', 'answer', 'output',
               'completion', 'chosen', 'rejected', 'rejected_response', 'rejected_messages', 'label'}


def _as_messages(value, field: str, default_role: str) -> list[dict]:
    """Text -> one message of ``default_role``; a message -> [it]; a list of messages -> parsed."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(field, 'is empty')
        return [{'role': default_role, 'content': value}]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        key = 'from' if value and isinstance(value[0], dict) and 'from' in value[0] else 'role'
        content = 'value' if key == 'from' else 'content'
        return parse_messages(value, field, key, content)
    if value is None:
        raise RowError(field, 'is null')
    raise RowError(field, f'expected text or a list of messages, got {type(value).__name__}')


def _answer(value, field: str) -> dict:
    """One assistant message from text, a message, or a list holding exactly one assistant message."""
    msgs = _as_messages(value, field, 'assistant')
    if len(msgs) != 1 or msgs[0]['role'] != 'assistant':
        roles = '/'.join(m['role'] for m in msgs)
        raise RowError(field, f'expected one assistant answer, got messages {roles}')
    if not msgs[0].get('tool_calls') and not str(msgs[0]['content']).strip():
        raise RowError(field, 'is empty')
    return msgs[0]


def _message_key(row: dict) -> str | None:
    return next((k for k in MESSAGE_KEYS if k in row), None)


def _conversation(row: dict) -> list[dict]:
    """The row's conversation in any SFT format (messages, ShareGPT conversations, query/response/history)."""
    key = _message_key(row)
    if key is None:
        return _query_response(row)
    items = row[key]
    sharegpt = key == 'conversations' or (isinstance(items, list) and items and isinstance(items[0], dict)
                                          and 'from' in items[0])
    return parse_messages(items, key, 'from', 'value') if sharegpt else parse_messages(items, key, 'role', 'content')


def _with_system(row: dict, messages: list[dict]) -> list[dict]:
    key = next((k for k in SYSTEM_KEYS if row.get(k)), None)
    if key is not None and (not messages or messages[0]['role'] != 'system'):
        return [{'role': 'system', 'content': _string(row[key], key)}] + messages
    return messages


def _split_answer(messages: list[dict], field: str) -> tuple[list[dict], dict]:
    if not messages or messages[-1]['role'] != 'assistant':
        last = messages[-1]['role'] if messages else 'nothing'
        raise RowError(field, f'must end with the assistant\'s answer, ends with {last}')
    prompt, answer = messages[:-1], messages[-1]
    check_conversation(prompt, require_answer=False)
    return prompt, answer


def _same_answer(a: dict, b: dict) -> bool:
    def key(m):
        return (str(m.get('content') or '').strip(), repr(m.get('tool_calls')), str(m.get('reasoning_content') or ''))
    return key(a) == key(b)


def _prompt_of(row: dict) -> list[dict]:
    prompt = _as_messages(row['prompt'], 'prompt', 'user')
    check_conversation(prompt, require_answer=False)
    if prompt[-1]['role'] == 'assistant':
        raise RowError('prompt', 'ends with an assistant message; the answer goes in chosen/rejected/completion')
    return prompt


def _paired(row: dict) -> dict:
    rejected_key = next((k for k in REJECTED_KEYS if k in row), None)
    has_rejected_messages = 'rejected_messages' in row
    if rejected_key is None and not has_rejected_messages:
        raise RowError('rejected', 'missing: a preference row needs a rejected answer (rejected, rejected_response '
                                   f'or rejected_messages; columns: {", ".join(sorted(row)) or "none"})')
    if rejected_key and row[rejected_key] is None:
        raise RowError(rejected_key, 'is null: a preference row needs a rejected answer')
    if 'prompt' in row and 'chosen' in row:                       # TRL, explicit prompt
        prompt, chosen = _prompt_of(row), _answer(row['chosen'], 'chosen')
        rejected = _answer(row[rejected_key], rejected_key)
    elif 'chosen' in row and isinstance(row['chosen'], list) and \
            _message_key(row) is None:                             # TRL, implicit prompt: two conversations
        chosen_msgs = _as_messages(row['chosen'], 'chosen', 'user')
        rejected_msgs = _as_messages(row[rejected_key], rejected_key, 'user')
        prompt, chosen = _split_answer(chosen_msgs, 'chosen')
        _, rejected = _split_answer(rejected_msgs, rejected_key)
        if chosen_msgs[:-1] != rejected_msgs[:-1]:
            raise RowError(rejected_key, 'differs from chosen before the final answer: as whole conversations, '
                                         'chosen and rejected must share every turn but the last')
    else:                                                          # ms-swift: a conversation + rejected_response
        has_prompt = _message_key(row) is not None or any(k in row for k in QUERY_KEYS)
        if not has_prompt:
            missing = 'prompt' if 'chosen' in row else 'chosen'
            raise RowError(missing, f'missing: a preference row needs a prompt and a chosen answer (columns: '
                                    f'{", ".join(sorted(row)) or "none"})')
        if 'prompt' in row and 'chosen' not in row and 'response' not in row and 'answer' not in row \
                and 'output' not in row and 'completion' not in row:
            raise RowError('chosen', 'missing: a preference row with a "prompt" needs "chosen" and "rejected"')
        prompt, chosen = _split_answer(_conversation(row), _message_key(row) or 'response')
        if has_rejected_messages:
            other = _as_messages(row['rejected_messages'], 'rejected_messages', 'user')
            other_prompt, rejected = _split_answer(other, 'rejected_messages')
            if [m for m in other_prompt if m['role'] != 'system'] != [m for m in prompt if m['role'] != 'system']:
                raise RowError('rejected_messages', 'has other prompt turns than the chosen conversation')
        else:
            rejected = _answer(row[rejected_key], rejected_key)
    prompt = _with_system(row, prompt)
    if not prompt or prompt[-1]['role'] == 'assistant' or all(m['role'] == 'system' for m in prompt):
        raise RowError('prompt', 'is missing: the answers need a user turn before them')
    if _same_answer(chosen, rejected):
        raise RowError(rejected_key or 'rejected_messages', 'is identical to the chosen answer: the pair teaches '
                                                            'nothing')
    return {'prompt': prompt, 'chosen': chosen, 'rejected': rejected}


def _label(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ('true', 'false', '1', '0', 'yes', 'no'):
        return value.strip().lower() in ('true', '1', 'yes')
    raise RowError('label', f'expected true or false (desirable or not), got {value!r}')


def _kto(row: dict) -> dict:
    label = _label(row['label'])
    if 'prompt' in row and 'completion' in row:                   # TRL unpaired preference
        prompt, completion = _prompt_of(row), _answer(row['completion'], 'completion')
    else:
        prompt, completion = _split_answer(_conversation(row), _message_key(row) or 'response')
    prompt = _with_system(row, prompt)
    if not prompt or all(m['role'] == 'system' for m in prompt):
        raise RowError('prompt', 'is missing: the completion needs a user turn before it')
    return {'prompt': prompt, 'completion': completion, 'label': label}


def normalize_preference(row: dict) -> dict:
    """A preference row -> ``{"prompt", "chosen", "rejected"}``, or a KTO row (one with ``label``) ->
    ``{"prompt", "completion", "label"}``; ``tools`` is kept. Raises `RowError` naming the field."""
    if '__error__' in row:
        raise RowError('row', row['__error__'])
    out = _kto(row) if 'label' in row else _paired(row)
    if row.get('tools'):
        out['tools'] = _tools(row['tools'])
    return out


def normalize_pair(row: dict, method: str = 'dpo') -> dict:
    """A row for a pairwise method: a KTO row is an error here."""
    item = normalize_preference(row)
    if 'label' in item:
        raise RowError('label', f'this is a KTO row (prompt, completion, label); {method} needs a chosen and a '
                                'rejected answer per row')
    return item


def normalize_kto(row: dict) -> list[dict]:
    """Rows for kto: a KTO row as it is, a paired row as two (chosen desirable, rejected undesirable)."""
    if '__error__' not in row and 'label' not in row and 'rejected_messages' not in row and \
            not any(k in row for k in REJECTED_KEYS):
        raise RowError('rejected', 'missing: a kto row needs either a "label" column (true/false: is its one answer '
                                   'desirable?) or a rejected answer to pair with the chosen one (rejected, '
                                   'rejected_response or rejected_messages; columns: '
                                   f'{", ".join(sorted(row)) or "none"})')
    item = normalize_preference(row)
    if 'label' in item:
        return [item]
    extra = {'tools': item['tools']} if 'tools' in item else {}
    return [{'prompt': item['prompt'], 'completion': item['chosen'], 'label': True, **extra},
            {'prompt': item['prompt'], 'completion': item['rejected'], 'label': False, **extra}]


def normalize_prompt(row: dict) -> dict:
    """A prompt row for grpo/ppo -> ``{"prompt": [messages], "extra": {...}}`` (see the module docstring)."""
    if '__error__' in row:
        raise RowError('row', row['__error__'])
    extra = {k: v for k, v in row.items() if k not in FORMAT_KEYS}
    if _message_key(row) is not None:
        messages = _conversation(row)
    elif 'prompt' in row and not isinstance(row['prompt'], str):
        messages = _as_messages(row['prompt'], 'prompt', 'user')
    else:
        key = next((k for k in QUERY_KEYS if k in row), None)
        if key is None:
            raise RowError('row', 'unrecognised format: no "messages", "prompt" or "query" column (columns: '
                                  f'{", ".join(sorted(row)) or "none"}); map columns with --columns')
        text = _string(row[key], key, allow_empty=False)
        if key == 'instruction' and row.get('input'):
            text = f"{text}\n{_string(row['input'], 'input')}"
        messages = []
        for j, pair in enumerate(row.get('history') or []):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise RowError(f'history[{j}]', 'expected a [query, response] pair')
            messages += [{'role': 'user', 'content': _string(pair[0], f'history[{j}][0]')},
                         {'role': 'assistant', 'content': _string(pair[1], f'history[{j}][1]')}]
        messages.append({'role': 'user', 'content': text})
        for k in ('response', 'answer', 'output', 'completion'):
            if k in row and 'solution' not in extra and row[k] is not None:
                extra['solution'] = row[k]
                break
    messages = _with_system(row, messages)
    if messages and messages[-1]['role'] == 'assistant':
        answer = messages.pop()
        extra.setdefault('solution', answer.get('content'))
    check_conversation(messages, require_answer=False)
    if messages[-1]['role'] not in ('user', 'tool'):
        raise RowError('messages', f'must end with a user turn to prompt from, ends with {messages[-1]["role"]}')
    out = {'prompt': messages, 'extra': extra}
    if row.get('tools'):
        out['tools'] = _tools(row['tools'])
    return out
