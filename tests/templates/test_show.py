"""`lmforge template show|list` output (brackets mode) and errors."""
from __future__ import annotations

import json

import pytest

from lmforge.cli import main as cli_main
from lmforge.templates.show import main

from .helpers import fixture_tokenizer, needs_fixtures

pytestmark = needs_fixtures


def model_dir(tmp_path, name: str) -> str:
    path = tmp_path / name
    fixture_tokenizer(name).save_pretrained(path)
    (path / 'config.json').write_text(json.dumps({'model_type': 'qwen2'}))
    return str(path)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_marks_the_trained_tokens(tmp_path, capsys):
    code, out, err = run(capsys, 'show', '--model', model_dir(tmp_path, 'qwen2.5-instruct'), '--color', 'never')
    assert code == 0 and err == ''
    assert "template: the model's own chat template" in out
    assert 'end-of-turn tokens: <|im_end|>' in out
    assert 'prefix-consistent: yes' in out
    assert '<|im_start|>assistant\n[[It is 4.<|im_end|>]]\n<|im_start|>user\nAnd 3+3?' in out
    assert '<|im_start|>assistant\n[[It is 6.<|im_end|>]]\n' in out
    assert out.split(' ---\n')[-1].count('[[') == 2 and '\033[' not in out


def test_show_a_fixed_split_template_with_system(tmp_path, capsys):
    code, out, _ = run(capsys, 'show', '--model', model_dir(tmp_path, 'deepseek-r1'), '--system', 'Be brief.')
    assert code == 0  # stdout is not a terminal under pytest: brackets
    assert "lmforge fix 'think-prefill'" in out
    assert 'prefix-consistent: no' in out and 'sequence 2 of 2' in out
    assert 'Be brief.<｜User｜>What is 2+2?<｜Assistant｜><think>\n[[\n</think>\n\nIt is 4.<｜end▁of▁sentence｜>]]' in out


def test_show_colour(tmp_path, capsys):
    _, out, _ = run(capsys, 'show', '--model', model_dir(tmp_path, 'llama-3-instruct'), '--color', 'always')
    assert '\033[1;32mIt is 4.<|eot_id|>\033[0m' in out and '[[' not in out


def test_show_a_dataset_row(tmp_path, capsys):
    data = tmp_path / 'data.jsonl'
    rows = [{'instruction': 'Say hi', 'output': 'Hi!'},
            {'messages': [{'role': 'user', 'content': 'Hello'}, {'role': 'assistant', 'content': 'Hello there!'}]}]
    data.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    code, out, _ = run(capsys, 'show', '--model', model_dir(tmp_path, 'glm-4-9b-chat'), '--dataset', str(data),
                       '--row', '2')
    assert code == 0
    assert f'example: {data}:2 (user/assistant)' in out
    assert '<|assistant|>[[\nHello there!<|user|>]]' in out and 'close-final-turn' in out


def test_show_last_round(tmp_path, capsys):
    _, out, _ = run(capsys, 'show', '--model', model_dir(tmp_path, 'qwen2.5-instruct'), '--loss_scale', 'last_round')
    assert out.split(' ---\n')[-1].count('[[') == 1 and '[[It is 6.<|im_end|>]]' in out


def test_list(capsys):
    code, out, _ = run(capsys, 'list')
    assert code == 0 and 'chatml' in out
    assert all(name in out for name in ('think-prefill', 'system-in-last-user', 'close-final-turn'))


@pytest.mark.parametrize('argv, message', [
    (['show'], 'the following arguments are required: --model'),
    (['show', '--model', '/nonexistent/model'], '--model: /nonexistent/model does not exist'),
    ([], 'the following arguments are required'),
    (['show', '--model', 'M', '--color', 'pink'], "invalid choice: 'pink'"),
])
def test_errors_exit_2_without_traceback(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and 'Traceback' not in err
    assert err.startswith('lmforge template: error:')


def test_template_rejecting_the_example(tmp_path, capsys):
    code, _, err = run(capsys, 'show', '--model', model_dir(tmp_path, 'gemma-2-it'), '--system', 'Be brief.')
    assert code == 2 and 'System role not supported' in err


def test_bad_row(tmp_path, capsys):
    data = tmp_path / 'd.jsonl'
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n')
    code, _, err = run(capsys, 'show', '--model', model_dir(tmp_path, 'qwen2.5-instruct'), '--dataset', str(data),
                       '--row', '3')
    assert code == 2 and '--row' in err


def test_cli_dispatch(capsys):
    assert cli_main(['template', 'list']) == 0
    assert 'close-final-turn' in capsys.readouterr().out
