"""Rendering through the model's own chat template, with exactly `tokenizer.apply_chat_template` semantics.

Everything goes through ``tokenizer.apply_chat_template(..., tokenize=False)``: the same Jinja environment
(trim_blocks, lstrip_blocks, raise_exception, strftime_now, the generation tag), the same handling of tools,
documents, add_generation_prompt, continue_final_message and extra template kwargs (enable_thinking, ...).
What is added here: lmforge-only message keys are removed before rendering, and template errors become
`TemplateError`s that quote the template's own message.
"""
from __future__ import annotations

from lmforge.errors import TemplateError

# Message keys lmforge reads itself; they never reach the template.
PRIVATE_KEYS = ('loss',)


def clean_messages(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        if any(k in m for k in PRIVATE_KEYS):
            m = {k: v for k, v in m.items() if k not in PRIVATE_KEYS}
        out.append(m)
    return out


def template_name(tokenizer) -> str:
    """Whose chat template it is, in errors: the model's (``the chat template of NAME``) or a --template file's."""
    path = getattr(tokenizer, 'lmforge_template_file', None)
    if path and isinstance(path, str):
        return f'{getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__} (--template {path})'
    return getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__


def render(tokenizer, messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False,
           continue_final_message: bool = False, documents: list | None = None, **template_kwargs) -> str:
    """The text the model's chat template produces for ``messages``."""
    import jinja2

    if tokenizer.chat_template is None:
        raise TemplateError(f'{template_name(tokenizer)} has no chat template: pass --template chatml (or another '
                            'name from `lmforge template list`) or a .jinja file')
    try:
        return tokenizer.apply_chat_template(clean_messages(messages), tools=tools, documents=documents,
                                             add_generation_prompt=add_generation_prompt,
                                             continue_final_message=continue_final_message, tokenize=False,
                                             **template_kwargs)
    except jinja2.TemplateError as e:
        raise TemplateError(f'the chat template of {template_name(tokenizer)} rejected a conversation '
                            f'({_roles(messages)}): {e}') from None
    except (TypeError, ValueError, KeyError, IndexError) as e:
        # A template that concatenates a dict to a string, indexes a missing key, ... or transformers refusing
        # the request (continue_final_message on a template that drops the message): still a data/template error.
        raise TemplateError(f'the chat template of {template_name(tokenizer)} could not render a conversation '
                            f'({_roles(messages)}): {type(e).__name__}: {e}') from None


def _roles(messages: list[dict]) -> str:
    return '/'.join(str(m.get('role', '?')) for m in messages)


def render_prompt(tokenizer, messages: list[dict], tools: list | None = None, **template_kwargs) -> str:
    """The inference prompt: the conversation so far plus the assistant's generation prompt.

    A conversation that ends with an assistant message is continued (its text is a prefix of the answer).
    """
    if messages and messages[-1].get('role') == 'assistant':
        return render(tokenizer, messages, tools=tools, continue_final_message=True, **template_kwargs)
    return render(tokenizer, messages, tools=tools, add_generation_prompt=True, **template_kwargs)
