"""The small override registry: templates for models whose own template cannot serve.

Only two cases belong here: base models that ship no chat template (they get ChatML, documented, or a name given
with --template), and known-broken templates, each with a named fix (`lmforge.templates.fixes`, applied to the model's
own template when its defect is detected, and announced). Everything else uses the model's own template as shipped.
"""
from __future__ import annotations

import os

from lmforge.errors import TemplateError
from lmforge.templates.fixes import applied_fix, apply_fixes, describe

# ChatML as Qwen2.5 writes it, without a default system prompt: the default for base models with no template.
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TEMPLATES = {
    'chatml': {'template': CHATML, 'special_tokens': ['<|im_start|>', '<|im_end|>'], 'eos_token': '<|im_end|>',
               'doc': 'ChatML (<|im_start|>role\\n...<|im_end|>): the default for base models without a template'},
}


def list_templates() -> dict[str, str]:
    return {name: entry['doc'] for name, entry in TEMPLATES.items()}


def apply_template(tokenizer, template: str | None = None) -> str:
    """Give ``tokenizer`` the template to use; return where it came from (printed by the workflows).

    ``template``: None (the model's own, ChatML when it has none), a registry name, or a path to a .jinja file (used
    verbatim: the way to opt out of a fix). The model's own template gets the named fix its defect calls for, if any;
    the returned text names it.
    """
    if template and os.path.isfile(template):
        with open(template, encoding='utf-8') as f:
            tokenizer.chat_template = f.read()
        return f'file {template}'
    if template:
        if template not in TEMPLATES:
            import difflib
            hint = difflib.get_close_matches(template, list(TEMPLATES), n=1)
            raise TemplateError(f'--template: unknown template {template!r}; known: {", ".join(TEMPLATES)}' +
                                (f'. Did you mean {hint[0]!r}?' if hint else '') + ' (or pass a .jinja file)')
        _install(tokenizer, TEMPLATES[template])
        return f'registry template {template!r}'
    if tokenizer.chat_template:
        already = applied_fix(tokenizer.chat_template)
        if already:
            return f"the model's own chat template, carrying {describe(already)} from an earlier lmforge run"
        fixed = apply_fixes(tokenizer)
        if fixed:
            return f"the model's own chat template with {describe(fixed[0])}; inference prompts are unchanged"
        return "the model's own chat template"
    _install(tokenizer, TEMPLATES['chatml'])
    return 'ChatML (the model ships no chat template; pass --template to choose another)'


def _install(tokenizer, entry: dict) -> None:
    missing = [t for t in entry['special_tokens'] if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:  # a new special token would need a new embedding row: say so rather than resize silently
        raise TemplateError(f'the tokenizer of {tokenizer.name_or_path} lacks the special tokens {missing} that this '
                            'template needs; choose a template built from tokens the model knows (.jinja file)')
    tokenizer.chat_template = entry['template']


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Prepend ``system`` to a conversation that has no system message (--system)."""
    if system is None or (messages and messages[0].get('role') == 'system'):
        return messages
    return [{'role': 'system', 'content': system}] + list(messages)
