"""The named template fixes: found by behaviour, announced, inference prompts unchanged, kept across save/load."""
from __future__ import annotations

import pytest

from lmforge.demo.build import build_tokenizer
from lmforge.errors import TemplateError
from lmforge.templates import apply_template, encode_chat_samples, render, render_prompt, stop_token_ids
from lmforge.templates.fixes import FIXES, applied_fix

from .helpers import CORPUS, fixture_names, fixture_tokenizer, labelled_runs, needs_fixtures, results

FIXED = {'deepseek-r1': 'think-prefill', 'deepseek-r1-distill-qwen': 'think-prefill',
         'mistral-7b-instruct-v0.3': 'system-in-last-user', 'chatglm3-6b': 'close-final-turn',
         'glm-4-9b-chat': 'close-final-turn'}


@needs_fixtures
@pytest.mark.parametrize('name', fixture_names())
def test_which_templates_get_a_fix(name):
    tok = fixture_tokenizer(name)
    original = tok.chat_template
    source = apply_template(tok)
    if name in FIXED:
        assert f"lmforge fix '{FIXED[name]}'" in source and applied_fix(tok.chat_template) == FIXED[name]
        assert original in tok.chat_template  # the model's own template, unchanged inside the wrapper
    else:
        assert source == "the model's own chat template" and tok.chat_template == original


def conversations(name: str, tool: dict) -> list[tuple[list[dict], list | None]]:
    """Prompts of every shape: first turn, later turns, with and without system, after a tool result."""
    system = [{'role': 'system', 'content': 'Be brief.'}] if results(name)['supports_system_role'] else []
    turns = [{'role': 'user', 'content': 'What is 2+2?'}, {'role': 'assistant', 'content': 'It is 4.'},
             {'role': 'user', 'content': 'And 3+3?'}, {'role': 'assistant', 'content': 'It is 6.'},
             {'role': 'user', 'content': 'Thanks!'}]
    out = [(msgs[:k], None) for msgs in (turns, system + turns) for k in range(1, len(msgs) + 1, 2)
           if msgs[k - 1]['role'] == 'user']
    if results(name)['tools_schema_rendered']:
        out.append((turns[:1], [tool]))
    return out


@needs_fixtures
@pytest.mark.parametrize('name', sorted(FIXED))
def test_fixed_templates_keep_inference_prompts_byte_identical(name, weather_tool):
    original, fixed = fixture_tokenizer(name), fixture_tokenizer(name)
    apply_template(fixed)
    for messages, tools in conversations(name, weather_tool):
        assert render_prompt(fixed, messages, tools=tools) == render_prompt(original, messages, tools=tools)
        assert render(fixed, messages, tools=tools) == render(original, messages, tools=tools)


@needs_fixtures
@pytest.mark.parametrize('name', sorted(FIXED))
def test_a_saved_fixed_template_is_not_fixed_twice(name, tmp_path):
    from lmforge.models import load_tokenizer

    tok = fixture_tokenizer(name)
    apply_template(tok)
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    source = apply_template(again)
    assert again.chat_template == tok.chat_template
    assert 'from an earlier lmforge run' in source and FIXED[name] in source


@needs_fixtures
def test_a_jinja_file_is_used_verbatim(tmp_path):
    """--template FILE is the way to opt out of a fix."""
    tok = fixture_tokenizer('chatglm3-6b')
    path = tmp_path / 'own.jinja'
    path.write_text(tok.chat_template, encoding='utf-8')
    assert apply_template(tok, str(path)) == f'file {path}'
    assert applied_fix(tok.chat_template) is None


@needs_fixtures
@pytest.mark.parametrize('name', ['chatglm3-6b', 'glm-4-9b-chat'])
def test_glm_stops_on_the_token_it_learns(name):
    tok = fixture_tokenizer(name)
    assert tok.convert_tokens_to_ids('<|user|>') not in stop_token_ids(tok)  # as shipped: nothing to stop on
    apply_template(tok)
    assert tok.convert_tokens_to_ids('<|user|>') in stop_token_ids(tok)


@needs_fixtures
def test_mistral_system_prompt_reaches_a_final_answer():
    original, fixed = fixture_tokenizer('mistral-7b-instruct-v0.3'), fixture_tokenizer('mistral-7b-instruct-v0.3')
    apply_template(fixed)
    messages = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'What is 2+2?'},
                {'role': 'assistant', 'content': 'It is 4.'}]
    assert 'Be brief.' not in render(original, messages)  # the defect
    assert render(fixed, messages) == '<s>[INST] Be brief.\n\nWhat is 2+2?[/INST] It is 4.</s>'
    with pytest.raises(TemplateError, match='renders assistant message 2 differently'):
        encode_chat_samples(original, messages)


@needs_fixtures
def test_deepseek_r1_continue_final_message_prefills_after_the_think_block():
    tok = fixture_tokenizer('deepseek-r1')
    apply_template(tok)
    messages = [{'role': 'user', 'content': 'What is 2+2?'}, {'role': 'assistant', 'content': 'It is'}]
    assert render_prompt(tok, messages).endswith('<｜Assistant｜><think>\n\n</think>\n\nIt is')


# The fixes are found by behaviour: templates no fixture holds get them too.
QWQ_LIKE = (  # ChatML whose generation prompt opens <think> while history turns drop the reasoning (QwQ-style)
    "{%- for m in messages %}{%- if m.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + m.content.split('</think>')[-1].lstrip('\\n') + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")
OPEN_TURNS = (  # role tags only, nothing closes a turn
    "{%- for m in messages %}{{ '<|' + m.role + '|>' + m.content }}{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{%- endif %}")


@pytest.mark.parametrize('template, specials, fix, label', [
    (QWQ_LIKE, ['<|im_start|>', '<|im_end|>', '<think>', '</think>'], 'think-prefill',
     'Add.\n</think>\n\nIt is 4.<|im_end|>'),
    (OPEN_TURNS, ['<|user|>', '<|assistant|>', '<|system|>'], 'close-final-turn', 'It is 4.<|user|>'),
])
def test_fixes_apply_to_any_template_with_the_defect(template, specials, fix, label):
    tok = build_tokenizer(CORPUS, specials, vocab_size=300, chat_template=template, eos_token=specials[1])
    assert fix in apply_template(tok)
    messages = [{'role': 'user', 'content': 'What is 2+2?'},
                {'role': 'assistant', 'content': 'It is 4.', 'reasoning_content': 'Add.'}]
    if fix != 'think-prefill':
        del messages[1]['reasoning_content']
    samples, _ = encode_chat_samples(tok, messages)
    assert labelled_runs(tok, samples[0]) == [label]
    assert samples[0].text.startswith(render_prompt(tok, messages[:1]))


def test_every_fix_is_documented():
    assert len({f.name for f in FIXES}) == len(FIXES)
    assert all(f.doc and len(f.doc) > 40 for f in FIXES)
