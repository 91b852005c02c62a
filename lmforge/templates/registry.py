"""The small override registry: templates for models whose own template cannot serve.

Only two cases belong here: base models that ship no chat template (they get ChatML, documented, or a name given
with --template), and known-broken templates, each with a named fix (`lmforge.templates.fixes`, applied to the model's
own template when its defect is detected, and announced). Everything else uses the model's own template as shipped.
"""
from __future__ import annotations

import os

from lmforge.errors import TemplateError
from lmforge.templates.fixes import applied_fix, apply_fixes, describe
from lmforge.templates.render import template_name

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
    _set_source_file(tokenizer, None)
    if template and (os.path.isfile(os.path.expanduser(template)) or
                     (template not in TEMPLATES and (looks_like_path(template) or
                                                     os.path.exists(os.path.expanduser(template))))):
        tokenizer.chat_template = read_template_file(template)
        _set_source_file(tokenizer, template)
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
        if isinstance(tokenizer.chat_template, str):
            check_syntax(tokenizer.chat_template, f'the chat template of {template_name(tokenizer)}')
        already = applied_fix(tokenizer.chat_template)
        if already:
            return f"the model's own chat template, carrying {describe(already)} from an earlier lmforge run"
        fixed = apply_fixes(tokenizer)
        if fixed:
            return f"the model's own chat template with {describe(fixed[0])}; inference prompts are unchanged"
        return "the model's own chat template"
    _install(tokenizer, TEMPLATES['chatml'])
    return 'ChatML (the model ships no chat template; pass --template to choose another)'


TEMPLATE_SUFFIXES = ('.jinja', '.jinja2', '.j2', '.tmpl', '.txt')


def looks_like_path(template: str) -> bool:
    """A --template value that names a file rather than a registry entry."""
    return template.endswith(TEMPLATE_SUFFIXES) or '/' in template or os.sep in template or \
        template.startswith(('.', '~'))


def read_template_file(path: str) -> str:
    """The text of a --template .jinja file, checked: it exists, is UTF-8, is not empty and parses as Jinja."""
    where = f'--template {path}'
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        raise TemplateError(f'{where}: is a directory; give a .jinja file or a registry name '
                            f'({", ".join(TEMPLATES)})')
    if not os.path.isfile(expanded):
        raise TemplateError(f'{where}: file not found (a .jinja chat template file, or a registry name: '
                            f'{", ".join(TEMPLATES)})')
    try:
        with open(expanded, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise TemplateError(f'{where}: cannot be read ({e.strerror or e})') from None
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = raw.count(b'\n', 0, e.start) + 1
        raise TemplateError(f'{where}: line {line}: not UTF-8 text (byte {raw[e.start]:#04x}): save the file as '
                            'UTF-8') from None
    if not text.strip():
        raise TemplateError(f'{where}: the file is empty; it should hold a Jinja chat template')
    check_syntax(text, where)
    return text


def check_syntax(source: str, where: str) -> None:
    """Parse ``source`` in the Jinja environment `apply_chat_template` uses; a syntax error names ``where`` and
    its line."""
    import jinja2

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # pragma: no cover - another transformers layout: rendering reports the error per row
        return
    try:
        _compile_jinja_template(source)
    except jinja2.TemplateSyntaxError as e:
        lines = source.splitlines()
        text = lines[e.lineno - 1].strip() if e.lineno and 0 < e.lineno <= len(lines) else ''
        shown = f' in {text[:80]!r}' if text else ''
        raise TemplateError(f'{where}: Jinja syntax error on line {e.lineno}{shown}: {e.message}') from None


def _set_source_file(tokenizer, path: str | None) -> None:
    """Remember the --template file the tokenizer's template came from (named in rendering errors)."""
    try:
        tokenizer.lmforge_template_file = path
    except Exception:  # noqa: BLE001 - a tokenizer class that refuses new attributes: errors name the model
        pass


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
