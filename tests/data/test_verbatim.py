"""The proof that a chat template prints message contents verbatim (lmforge.templates.verbatim), which lets encoding
skip the checking render: it must hold for the templates it accepts (random contents, empty and odd ones included,
give exactly the real render), refuse every template whose output or path depends on a content, and be used."""
import random

import pytest

from lmforge.templates import encode as enc
from lmforge.templates.verbatim import prints_contents_verbatim
from tests.templates.helpers import HAVE_FIXTURES, applied_tokenizer, fixture_names

HEAD = "{% for message in messages %}"
TAIL = "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
PLAIN = "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"


@pytest.mark.parametrize('body', [
    PLAIN,
    "{{ '<|im_start|>' ~ message.role ~ '\\n' ~ message.content ~ '<|im_end|>\\n' }}",
    "{% set c = message.content %}{% if message.role == 'user' %}{{ '[U]' + c }}{% else %}{{ c + '[/A]' }}{% endif %}",
    "{% if loop.first and message.role != 'system' %}{{ 'default system' }}{% endif %}" + PLAIN,
    "{% if message.tool_calls is defined %}{{ 'x' }}{% endif %}{% if message.content is string %}" + PLAIN +
    "{% endif %}",
    "{% if not loop.last and loop.nextitem.role == 'assistant' %}{{ '>' }}{% endif %}{{ message.content }}",
    "{{ bos_token if loop.first else '' }}{{ message['content'] }}{% generation %}{{ '.' }}{% endgeneration %}",
])
def test_templates_that_print_contents_as_they_are_are_proven(body):
    assert prints_contents_verbatim(HEAD + body + TAIL)


@pytest.mark.parametrize('body', [
    "{% if message.content %}" + PLAIN + "{% endif %}",                       # empty content renders differently
    "{{ message['content'] | trim }}",                                        # a filter on content
    "{{ message.content.strip() }}",                                          # a method of content
    "{{ message.content[0] }}",                                               # a piece of it
    "{% if '<think>' in message.content %}x{% endif %}{{ message.content }}",  # a decision on it
    "{{ message | tojson }}",                                                 # a message printed whole
    "{{ messages | tojson }}",
    "{% for k, v in message.items() %}{{ v }}{% endfor %}",                   # a dict method
    "{{ message.get('content') }}",
    "{% set ns = namespace(x='') %}{% set ns.x = message.content %}{{ ns.x }}",
    "{{ strftime_now('%d %b %Y') }}{{ message.content }}",                   # the clock
    "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(message.content) }}",          # not analysed
    "{{ (message.content or 'empty') }}",
    "{{ message.content | length }}",
    "{% for c in message.content %}{{ c }}{% endfor %}",
    "{{ '%s' % message.content }}",
])
def test_templates_whose_output_or_path_depends_on_content_are_not(body):
    assert not prints_contents_verbatim(HEAD + body + TAIL)


def _random_conversation(rng: random.Random, shape: list[str]) -> list[dict]:
    pieces = ['', ' ', '\n', 'Hi', ' padded ', 'tab\there', 'ünïcödé 中文 😀', '{{ x }}', '{% if %}', '<|im_end|>',
              '\\n', "'quoted'", '  trailing\n\n', '<think>\n\n</think>\n\nok', 'loss', 'role: user']
    return [{'role': role, 'content': ''.join(rng.choice(pieces) for _ in range(rng.randint(0, 3)))}
            for role in shape]


SHAPES = [['user', 'assistant'], ['system', 'user', 'assistant'],
          ['system', 'user', 'assistant', 'user', 'assistant'], ['user', 'assistant', 'user', 'assistant']]


def _proven_tokenizers():
    from tests.conftest import make_tokenizer

    out = [('demo chatml', make_tokenizer())]
    return out + [(name, applied_tokenizer(name)) for name in fixture_names()
                  if prints_contents_verbatim(applied_tokenizer(name).chat_template)]


def _outcome(tok, messages):
    from lmforge.errors import TemplateError

    try:
        return enc.render_samples(tok, messages)
    except TemplateError as e:
        return str(e)


def test_proven_templates_give_the_real_render_for_random_contents(monkeypatch):
    tokenizers = _proven_tokenizers()
    if HAVE_FIXTURES:
        assert {'internlm2-chat', 'phi-3-mini-instruct', 'phi-4', 'yi-1.5-chat', 'zephyr-7b-beta'} <= \
            {name for name, _ in tokenizers}
    rng = random.Random(0)
    renders = []
    real_render = enc.render
    checked = warm_shapes = 0
    for name, tok in tokenizers:
        for shape in SHAPES:
            convs = [_random_conversation(rng, shape) for _ in range(25)]
            with monkeypatch.context() as m:  # the reference: every turn rendered (2k+1 renders)
                m.setattr(enc, '_shape_key', lambda *a, **k: None)
                want = [_outcome(tok, c) for c in convs]
            with monkeypatch.context() as m:
                m.setattr(enc, 'render', lambda *a, **k: renders.append(1) or real_render(*a, **k))
                assert [_outcome(tok, c) for c in convs] == want, name
                checked += len(convs)
                if any(v is not None for v in enc._SKELETONS.get(tok, {}).values()):
                    warm_shapes += 1  # after the first conversation of a shape, none is rendered again
                    before = len(renders)
                    assert [_outcome(tok, c) for c in convs] == want, name
                    assert len(renders) == before, name
    assert checked >= 500 and warm_shapes >= 20


@pytest.mark.skipif(not HAVE_FIXTURES, reason='chat template fixtures not found')
def test_unproven_templates_keep_the_checking_render(monkeypatch):
    tok = applied_tokenizer('llama-3.1-instruct')  # trims contents: the skeleton alone would be wrong
    assert not prints_contents_verbatim(tok.chat_template)
    conv = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]
    enc.render_samples(tok, conv)  # first of its shape
    calls = []
    real = enc.render
    monkeypatch.setattr(enc, 'render', lambda *a, **k: calls.append(1) or real(*a, **k))
    padded = [{'role': 'user', 'content': '  Hi  '}, {'role': 'assistant', 'content': ' Hello\n'}]
    texts, _ = enc.render_samples(tok, padded)
    assert calls and texts[0][0] == real(tok, padded)
