"""An Ollama Modelfile: the model's chat template as a Go template, its stop tokens and default system prompt.

The Jinja template is not translated; its *output* is: probe conversations with marker contents are rendered, and
the text around each role's content (prefix/suffix), the generation prompt and a default system prompt are read off.
Those pieces are assembled into Ollama's template language and re-checked by rendering a longer conversation both
ways; templates that do more than wrap each turn (dates, tool lists, history-dependent output) are reported as
approximated.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from lmforge.errors import TemplateError

SYS, U1, A1, U2, A2, U3 = ('\x01SYS\x01', '\x01USER1\x01', '\x01ASSISTANT1\x01', '\x01USER2\x01', '\x01ASSISTANT2\x01',
                           '\x01USER3\x01')


def log(msg: str) -> None:
    print(f'[lmforge export] {msg}', flush=True)


@dataclass
class TurnFormat:
    """How the template wraps each turn."""
    bos: str  # text the template starts with that the tokenizer adds as BOS anyway
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    generation_prompt: str  # starts an assistant turn
    assistant_suffix: str
    default_system: str | None  # the system prompt the template uses when a conversation has none
    supports_system: bool = True

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """What the Go template produces for ``messages`` (Ollama adds SYSTEM as a system message when none)."""
        out = ''
        if self.default_system is not None and not (messages and messages[0]['role'] == 'system'):
            if self.default_system:  # Ollama adds SYSTEM as a system message
                messages = [{'role': 'system', 'content': self.default_system}] + list(messages)
            else:  # an empty system block the template always writes: part of the Go template
                out = self.system_prefix + self.system_suffix
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            if m['role'] == 'system':
                out += self.system_prefix + m['content'] + self.system_suffix
            elif m['role'] == 'user':
                out += self.user_prefix + m['content'] + self.user_suffix
            elif m['role'] == 'assistant':
                out += self.generation_prompt + m['content'] + ('' if last else self.assistant_suffix)
            if last and m['role'] != 'assistant' and add_generation_prompt:
                out += self.generation_prompt
        return out


def _render(tokenizer, messages, gen=False) -> str:
    from lmforge.templates import render

    return render(tokenizer, [{'role': r, 'content': c} for r, c in messages], add_generation_prompt=gen)


def turn_format(tokenizer) -> TurnFormat:
    """Read the per-role wrapping off rendered probe conversations."""
    bos = tokenizer.bos_token or ''
    try:
        r_u = _render(tokenizer, [('user', U1)])
        r_ug = _render(tokenizer, [('user', U1)], gen=True)
        r_uau = _render(tokenizer, [('user', U1), ('assistant', A1), ('user', U2)])
    except TemplateError as e:
        raise TemplateError(f'--to_ollama: the chat template cannot render plain user/assistant turns: {e}') from None
    if not r_ug.startswith(r_u):
        raise TemplateError('--to_ollama: the generation prompt is not appended at the end of the conversation; the '
                            'template cannot be expressed as an Ollama template')
    gen = r_ug[len(r_u):]
    head, _, user_suffix = r_u.partition(U1)
    between = r_uau.split(U1, 1)[1].split(A1, 1)[0]  # user suffix + generation prompt
    if between != user_suffix + gen:  # the last user turn ends differently from earlier ones: keep the earlier form
        user_suffix = between[:-len(gen)] if gen and between.endswith(gen) else between
    # after the assistant's content: its suffix, then the next user turn's prefix. The suffix runs to the end-of-turn
    # token (and the whitespace after it); without one, the user prefix is what the first turn also starts with.
    tail = r_uau.split(A1, 1)[1].split(U2, 1)[0]
    cut = _end_of_turn(tokenizer, tail)
    if cut is None:
        user_prefix = _common_suffix(head, tail)
        cut = len(tail) - len(user_prefix)
    assistant_suffix, user_prefix = tail[:cut], tail[cut:]
    if not head.endswith(user_prefix):
        raise TemplateError('--to_ollama: the first user turn is not wrapped like the later ones; the template cannot '
                            'be expressed as an Ollama template')
    head = head[:len(head) - len(user_prefix)]
    lead = bos if bos and head.startswith(bos) else ''
    head = head[len(lead):]

    supports_system = True
    system_prefix = system_suffix = ''
    try:
        r_su = _render(tokenizer, [('system', SYS), ('user', U1)])
        sys_head = r_su.split(U1, 1)[0]
        sys_head = sys_head[len(lead):] if lead and sys_head.startswith(lead) else sys_head
        if user_prefix and sys_head.endswith(user_prefix):
            sys_head = sys_head[:len(sys_head) - len(user_prefix)]
        if SYS in sys_head:
            system_prefix, system_suffix = sys_head.split(SYS, 1)
        else:
            supports_system = False
    except TemplateError:
        supports_system = False
    default_system = None
    if head:
        if supports_system and head.startswith(system_prefix) and head.endswith(system_suffix) and \
                len(head) >= len(system_prefix) + len(system_suffix):
            default_system = head[len(system_prefix):len(head) - len(system_suffix)]
        else:
            default_system = head  # kept verbatim by the check below (reported as approximated)
    return TurnFormat(bos=lead, system_prefix=system_prefix, system_suffix=system_suffix, user_prefix=user_prefix,
                      user_suffix=user_suffix, generation_prompt=gen, assistant_suffix=assistant_suffix,
                      default_system=default_system, supports_system=supports_system)


def _end_of_turn(tokenizer, tail: str) -> int | None:
    """Offset in ``tail`` just past the template's end-of-turn token and the whitespace after it."""
    from lmforge.templates import end_of_turn_tokens

    hits = [(tail.find(t), t) for t in end_of_turn_tokens(tokenizer) if t in tail]
    if not hits:
        return None
    pos, tok = min(hits)
    cut = pos + len(tok)
    while cut < len(tail) and tail[cut] in ' \n':
        cut += 1
    return cut


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return b[len(b) - n:] if n else ''


def check_format(tokenizer, fmt: TurnFormat) -> bool:
    """Does the derived format reproduce the Jinja template on a longer conversation (with and without system)?"""
    convs = [[('user', U1), ('assistant', A1), ('user', U2), ('assistant', A2), ('user', U3)]]
    if fmt.supports_system:
        convs.append([('system', SYS)] + convs[0])
    for conv in convs:
        expected = _render(tokenizer, conv, gen=True)
        if fmt.bos and expected.startswith(fmt.bos):
            expected = expected[len(fmt.bos):]
        got = fmt.render([{'role': r, 'content': c} for r, c in conv])
        if got != expected:
            return False
    return True


def go_literal(text: str) -> str:
    """Text placed literally in a Go template: only `{{` needs escaping."""
    return text.replace('{{', '{{ "{{" }}')


def go_template(fmt: TurnFormat) -> str:
    """The Ollama (Go text/template) form of ``fmt``; no whitespace trimming, so every character is the template's."""
    L = go_literal
    system = f'{{{{ if eq .Role "system" }}}}{L(fmt.system_prefix)}{{{{ .Content }}}}{L(fmt.system_suffix)}' \
        if fmt.supports_system else '{{ if eq .Role "system" }}'
    head = ''
    if fmt.default_system == '':
        head = (f'{{{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}}}'
                f'{L(fmt.system_prefix + fmt.system_suffix)}{{{{ end }}}}')
    return (head + '{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
            f'{system}'
            f'{{{{ else if eq .Role "user" }}}}{L(fmt.user_prefix)}{{{{ .Content }}}}{L(fmt.user_suffix)}'
            f'{{{{ else if eq .Role "assistant" }}}}{L(fmt.generation_prompt)}{{{{ .Content }}}}'
            f'{{{{ if not $last }}}}{L(fmt.assistant_suffix)}{{{{ end }}}}{{{{ end }}}}'
            f'{{{{ if and $last (ne .Role "assistant") }}}}{L(fmt.generation_prompt)}{{{{ end }}}}{{{{ end }}}}')


def _quote(text: str) -> str:
    if '"""' in text:
        raise TemplateError('--to_ollama: the template or system prompt contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def stop_tokens(tokenizer, generation_config=None) -> list[str]:
    """The texts that end a turn: the template's end-of-turn tokens, the generation config's and tokenizer's eos."""
    from lmforge.templates import stop_token_ids

    out = []
    for tid in stop_token_ids(tokenizer, generation_config):
        text = tokenizer.convert_ids_to_tokens(tid)
        if text and text not in out:
            out.append(text)
    return out


def write_modelfile(out_dir: str, source: str, tokenizer, generation_config=None) -> dict:
    """Write ``out_dir/Modelfile``: FROM ``source`` (a .gguf file or a safetensors directory, relative to out_dir
    when inside it), TEMPLATE, SYSTEM, stop PARAMETERs and the generation config's sampling defaults."""
    lines = []
    rel = os.path.relpath(source, out_dir)
    if rel == '.':
        lines.append('FROM .')
    else:
        lines.append(f'FROM {"./" + rel if not rel.startswith("..") else os.path.abspath(source)}')
    approximated = False
    fmt = None
    if tokenizer.chat_template:
        try:
            fmt = turn_format(tokenizer)
        except TemplateError as e:
            log(f'warning: {e}. The Modelfile has no TEMPLATE: Ollama falls back to the template it recognises '
                'from the GGUF metadata (tokenizer.chat_template), if any; write one by hand otherwise')
    if fmt is not None:
        approximated = not check_format(tokenizer, fmt)
        if approximated:
            log('warning: the chat template does more than wrap each turn (dates, tools, history-dependent text); '
                'the Modelfile TEMPLATE reproduces its plain-chat form only: check it')
        lines.append(f'TEMPLATE {_quote(go_template(fmt))}')
        if fmt.default_system:
            lines.append(f'SYSTEM {_quote(fmt.default_system)}')
    elif not tokenizer.chat_template:
        log('warning: the model has no chat template; the Modelfile has no TEMPLATE (raw completion)')
    stops = stop_tokens(tokenizer, generation_config)
    for s in stops:
        lines.append(f'PARAMETER stop {_json_quote(s)}')
    gen = generation_config
    if gen is not None and getattr(gen, 'do_sample', False):
        for key, name in (('temperature', 'temperature'), ('top_p', 'top_p'), ('top_k', 'top_k'),
                          ('repetition_penalty', 'repeat_penalty')):
            value = getattr(gen, key, None)
            if value is not None:
                lines.append(f'PARAMETER {name} {value}')
    path = os.path.join(out_dir, 'Modelfile')
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    log(f'Ollama Modelfile: {path} (stop: {", ".join(stops)}); load it with '
        f'`ollama create NAME -f {path}`')
    return {'path': path, 'stop': stops, 'format': fmt, 'approximated': approximated}


def _json_quote(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)
