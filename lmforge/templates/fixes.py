"""Named fixes for chat templates that cannot be trained on as shipped.

A fix never re-types a template. It wraps the model's own template, unchanged, in a Jinja macro and changes only how
a conversation that *ends with an assistant message* is rendered without a generation prompt — the training render:

    {% macro lmf_original(messages, add_generation_prompt) %}<the model's template, byte for byte>{% endmacro %}
    <a few lines that call lmf_original>

Every render with ``add_generation_prompt=True`` (or ending with a user/tool message) goes straight to the original,
so inference prompts stay byte-identical: train == serve. `apply_fixes` checks this on probe conversations before it
installs a fix, and the fixed template is what the checkpoint saves, so a later run, the server or an export render
exactly what training saw.

Each fix is recognised by behaviour, not by model name: a probe conversation is rendered and the defect looked for.
So a fix covers every template with that defect (DeepSeek-R1 and its distills, QwQ-like templates, ...).

- think-prefill: the generation prompt ends with an opening ``<think>`` that the rendered assistant turn lacks
  (DeepSeek-R1, R1-Distill). The final turn is rendered as the generation prompt followed by
  ``{reasoning}\\n</think>\\n\\n{answer}`` and the template's own end of turn: what the model generates after that
  prompt. Reasoning comes from ``reasoning_content`` or an inline ``<think>...</think>`` in the content.
- system-in-last-user: the template puts the system prompt into the last user turn only, so it vanishes when an
  assistant turn is last (Mistral-7B-Instruct v0.1-v0.3, Mixtral, Nemo). The final turn is rendered right after the
  inference prompt — which carries the system prompt — as the template renders that turn.
- close-final-turn: nothing closes an assistant turn; the next turn's opening token ends it (ChatGLM3, GLM-4:
  ``<|user|>``). That token is rendered after a final assistant turn, so the model learns to emit it, and generation
  stops on it (`end_of_turn_tokens` finds it; the checkpoint's generation_config lists it as eos). LLaMA-Factory and
  ms-swift train the same token after a GLM answer.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from lmforge.errors import TemplateError
from lmforge.templates.render import render

MARKER = '{#- lmforge fix '
MACRO = 'lmf_original'

# Probe conversations: distinctive texts so that their presence in a render can be tested.
SYS, U1, A1, U2 = 'SYS-PROBE be brief.', 'USER-PROBE hello', 'ANSWER-PROBE hi there', 'USER-PROBE again'


@dataclass(frozen=True)
class Fix:
    name: str
    doc: str
    detect: Callable  # (tokenizer) -> dict of build parameters, or None when the template does not need this fix
    body: Callable    # (**parameters) -> Jinja text rendered after the macro definition


def _lit(text: str) -> str:
    """A Jinja string literal for ``text`` (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text, ensure_ascii=False)


def _try(tokenizer, messages, **kw) -> str | None:
    try:
        return render(tokenizer, messages, **kw)
    except TemplateError:
        return None


def _special_tokens(tokenizer) -> list[str]:
    tokens = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    return sorted((t for t in tokens if t), key=len, reverse=True)


# --- think-prefill ---------------------------------------------------------------------------------------------------

def _detect_think_prefill(tokenizer):
    user = [{'role': 'user', 'content': U1}]
    prompt = _try(tokenizer, user, add_generation_prompt=True)
    upto = _try(tokenizer, user + [{'role': 'assistant', 'content': A1}])
    base = _try(tokenizer, user)
    if None in (prompt, upto, base) or upto.startswith(prompt) or not prompt.startswith(base):
        return None
    opener = re.search(r'<think>\s*$', prompt)
    return {'opener': opener.group(0)} if opener else None


def _body_think_prefill(opener: str) -> str:
    return """
{%- set lmf_final = messages[-1] if messages else none %}
{%- if not add_generation_prompt and lmf_final is not none and lmf_final.role == 'assistant' %}
  {%- set lmf_history = messages[:-1] %}
  {%- set lmf_base = lmf_original(lmf_history, false) %}
  {%- set lmf_prompt = lmf_original(lmf_history, true) %}
  {%- if lmf_prompt.startswith(lmf_base) and lmf_prompt.endswith(OPENER) %}
    {%- set lmf_answer = lmf_final.content if lmf_final.content is string else '' %}
    {%- set lmf_reasoning = lmf_final.reasoning_content if lmf_final.reasoning_content is string else '' %}
    {%- if '</think>' in lmf_answer %}
      {%- if not lmf_reasoning %}
        {%- set lmf_reasoning = lmf_answer.split('</think>')[0].split('<think>')[-1] %}
      {%- endif %}
      {%- set lmf_answer = lmf_answer.split('</think>')[-1] %}
    {%- endif %}
    {%- set lmf_turn = lmf_original(lmf_history + [dict(lmf_final, content=lmf_answer.lstrip())], false) %}
    {%- set lmf_head = lmf_prompt[lmf_base|length:lmf_prompt|length - OPENER|length] %}
    {%- set lmf_body = lmf_turn[lmf_base|length:] %}
    {%- if not (lmf_turn.startswith(lmf_base) and lmf_body.startswith(lmf_head)) %}
      {{- raise_exception('lmforge fix think-prefill: this turn does not continue its generation prompt') }}
    {%- endif %}
    {{- lmf_prompt + lmf_reasoning.strip() + '\\n</think>\\n\\n' + lmf_body[lmf_head|length:] }}
  {%- else %}
    {{- lmf_original(messages, add_generation_prompt) }}
  {%- endif %}
{%- else %}
  {{- lmf_original(messages, add_generation_prompt) }}
{%- endif %}
""".replace('OPENER', _lit(opener))


# --- system-in-last-user ---------------------------------------------------------------------------------------------

def _detect_system_in_last_user(tokenizer):
    system = [{'role': 'system', 'content': SYS}, {'role': 'user', 'content': U1}]
    prompt = _try(tokenizer, system, add_generation_prompt=True)
    upto = _try(tokenizer, system + [{'role': 'assistant', 'content': A1}])
    if prompt is None or upto is None or SYS not in prompt or SYS in upto:
        return None
    return {}


def _body_system_in_last_user() -> str:
    return """
{%- if not add_generation_prompt and messages|length > 2 and messages[0].role == 'system'
      and messages[-1].role == 'assistant' %}
  {%- set lmf_rest = messages[1:] %}
  {%- set lmf_before = lmf_original(lmf_rest[:-1], true) %}
  {%- set lmf_after = lmf_original(lmf_rest, false) %}
  {%- if not lmf_after.startswith(lmf_before) %}
    {{- raise_exception('lmforge fix system-in-last-user: the final assistant turn does not continue its prompt') }}
  {%- endif %}
  {{- lmf_original(messages[:-1], true) + lmf_after[lmf_before|length:] }}
{%- else %}
  {{- lmf_original(messages, add_generation_prompt) }}
{%- endif %}
"""


# --- close-final-turn ------------------------------------------------------------------------------------------------

def _detect_close_final_turn(tokenizer):
    convo = [{'role': 'user', 'content': U1}, {'role': 'assistant', 'content': A1}]
    upto = _try(tokenizer, convo)
    longer = _try(tokenizer, convo + [{'role': 'user', 'content': U2}])
    if upto is None or longer is None or A1 not in upto:
        return None
    specials = _special_tokens(tokenizer)
    tail = upto[upto.rindex(A1) + len(A1):]
    if any(t in tail for t in specials):
        return None  # the turn is closed already
    after = longer[longer.rindex(A1) + len(A1):].lstrip()
    closer = next((t for t in specials if after.startswith(t)), None)
    return {'closer': closer} if closer else None


def _body_close_final_turn(closer: str) -> str:
    return """
{{- lmf_original(messages, add_generation_prompt) }}
{%- if not add_generation_prompt and messages and messages[-1].role == 'assistant' %}
  {{- CLOSER }}
{%- endif %}
""".replace('CLOSER', _lit(closer))


FIXES = [
    Fix('think-prefill', 'the generation prompt opens <think> but rendered turns lack it (DeepSeek-R1 and its '
        'distills): the final turn is trained as <think>\\n{reasoning}\\n</think>\\n\\n{answer} after the prompt',
        _detect_think_prefill, _body_think_prefill),
    Fix('system-in-last-user', 'the system prompt is rendered only into the last user turn, so it vanishes when an '
        'assistant turn is last (Mistral v0.1-v0.3, Mixtral, Nemo): the final turn is trained after the inference '
        'prompt that carries it', _detect_system_in_last_user, _body_system_in_last_user),
    Fix('close-final-turn', 'no token closes an assistant turn (ChatGLM3, GLM-4): the token that opens the next '
        'turn (<|user|>) is rendered after the final answer, trained, and stopped on',
        _detect_close_final_turn, _body_close_final_turn),
]
FIXES_BY_NAME = {f.name: f for f in FIXES}


def wrap(source: str, fix: Fix, params: dict) -> str:
    """The fixed template: ``source`` unchanged inside the macro, then the fix's body.

    ``+%}`` and ``{%+`` keep trim_blocks/lstrip_blocks from touching the original's first and last characters.
    """
    header = (f"{MARKER}{fix.name}: the model's own template is the macro {MACRO}, unchanged; "
              "see lmforge.templates.fixes -#}\n")
    return (f'{header}{{%- macro {MACRO}(messages, add_generation_prompt) +%}}{source}{{%+ endmacro %}}'
            + fix.body(**params).strip('\n'))


def applied_fix(source: str | None) -> str | None:
    """The name of the lmforge fix a template already carries (a checkpoint saved after a fixed run)."""
    if isinstance(source, str) and source.startswith(MARKER):
        return source[len(MARKER):].split(':', 1)[0]
    return None


PROBES = [
    [{'role': 'user', 'content': U1}],
    [{'role': 'system', 'content': SYS}, {'role': 'user', 'content': U1}],
    [{'role': 'user', 'content': U1}, {'role': 'assistant', 'content': A1}, {'role': 'user', 'content': U2}],
    [{'role': 'system', 'content': SYS}, {'role': 'user', 'content': U1}, {'role': 'assistant', 'content': A1},
     {'role': 'user', 'content': U2}],
]


def _prompt_or_error(tokenizer, template: str, messages: list[dict]) -> str:
    original, tokenizer.chat_template = tokenizer.chat_template, template
    try:
        return render(tokenizer, messages, add_generation_prompt=True)
    except TemplateError as e:
        return f'ERROR {e}'
    finally:
        tokenizer.chat_template = original


def check_inference_identical(tokenizer, original: str, fixed: str) -> None:
    """Raise unless ``fixed`` renders every probe prompt exactly as ``original`` does."""
    for messages in PROBES:
        a, b = (_prompt_or_error(tokenizer, t, messages) for t in (original, fixed))
        if a != b:
            roles = '/'.join(m['role'] for m in messages)
            raise TemplateError(f'internal: a template fix changed the inference prompt of a {roles} conversation '
                                f'({a[-60:]!r} became {b[-60:]!r}); please report this template')


def apply_fixes(tokenizer) -> list[str]:
    """Detect and install the fix ``tokenizer.chat_template`` needs; return the names applied ([] if none)."""
    source = tokenizer.chat_template
    if not isinstance(source, str) or not source or applied_fix(source):
        return []  # none, a dict of named templates (left as shipped), or fixed already
    for fix in FIXES:
        params = fix.detect(tokenizer)
        if params is None:
            continue
        fixed = wrap(source, fix, params)
        check_inference_identical(tokenizer, source, fixed)
        tokenizer.chat_template = fixed
        return [fix.name]
    return []


def describe(name: str) -> str:
    return f"lmforge fix '{name}' ({FIXES_BY_NAME[name].doc})" if name in FIXES_BY_NAME else f"lmforge fix '{name}'"
