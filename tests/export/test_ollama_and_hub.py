"""`--to_ollama`: the Modelfile's Go template reproduces the chat template, stop tokens from the template;
`--push_to_hub` offline is a clear error; the whole pipeline from a LoRA checkpoint through the CLI."""
from __future__ import annotations

import os

import pytest

from lmforge.errors import ModelError

CHATML_GO = ('{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
             '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
             '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
             '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}{{ if not $last }}<|im_end|>\n'
             '{{ end }}{{ end }}{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}{{ end }}')


def test_lora_to_gguf_and_ollama_through_the_cli(lora_ckpt, tmp_path, tokenizer, capsys):
    """lmforge export --adapters CKPT --to_gguf --gguf_type q8_0 --to_ollama: merged weights, a GGUF of them and a
    Modelfile that points at it, with ChatML as a Go template and <|im_end|> as the stop token."""
    from gguf import GGUFReader

    from lmforge.cli import main

    out = tmp_path / 'out'
    code = main(['export', '--adapters', lora_ckpt, '--to_gguf', 'true', '--gguf_type', 'q8_0', '--to_ollama',
                 'true', '--output_dir', str(out)])
    log = capsys.readouterr().out
    assert code == 0, log
    assert 'merged first' in log and 'max |logit difference|' in log
    gguf_files = [f for f in os.listdir(out) if f.endswith('.gguf')]
    assert gguf_files == ['out-q8_0.gguf'] and os.path.isfile(out / 'model.safetensors')
    reader = GGUFReader(str(out / gguf_files[0]))
    assert reader.fields['general.file_type'].parts[-1][0] == 7
    modelfile = (out / 'Modelfile').read_text()
    assert modelfile == (f'FROM ./out-q8_0.gguf\nTEMPLATE """{CHATML_GO}"""\nPARAMETER stop "<|im_end|>"\n')


def test_go_template_reproduces_the_chat_template(tokenizer):
    from lmforge.export.ollama import check_format, go_template, turn_format

    fmt = turn_format(tokenizer)
    assert (fmt.user_prefix, fmt.user_suffix, fmt.generation_prompt, fmt.assistant_suffix) == \
        ('<|im_start|>user\n', '<|im_end|>\n', '<|im_start|>assistant\n', '<|im_end|>\n')
    assert fmt.default_system is None and check_format(tokenizer, fmt)
    assert go_template(fmt) == CHATML_GO
    messages = [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'Hi'},
                {'role': 'assistant', 'content': 'Yo'}, {'role': 'user', 'content': 'Again'}]
    assert fmt.render(messages) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _fixture_tokenizer(name):
    from tests.templates.helpers import HAVE_FIXTURES, fixture_tokenizer

    if not HAVE_FIXTURES:
        pytest.skip('chat template fixtures not found')
    return fixture_tokenizer(name)


@pytest.mark.parametrize('name,system,stop', [
    ('qwen2.5-instruct', 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.', ['<|im_end|>']),
    ('llama-3-instruct', None, ['<|eot_id|>']),
    ('gemma-2-it', None, ['<end_of_turn>', '<eos>']),
])
def test_modelfile_of_real_templates(name, system, stop, tmp_path):
    """Default system prompts become SYSTEM, a BOS the tokenizer adds is left to it, the stops are the template's."""
    from lmforge.export.ollama import check_format, write_modelfile

    tok = _fixture_tokenizer(name)
    out = write_modelfile(str(tmp_path), str(tmp_path / 'model.gguf'), tok)
    text = (tmp_path / 'Modelfile').read_text()
    assert out['stop'] == stop and not out['approximated'] and check_format(tok, out['format'])
    assert (f'SYSTEM """{system}"""' in text) == (system is not None)
    assert all(f'PARAMETER stop "{s}"' in text for s in stop)
    if tok.bos_token:
        assert tok.bos_token not in text.split('TEMPLATE', 1)[1]


def test_push_to_hub_offline_is_a_clear_error(qwen2_dir, monkeypatch, capsys):
    from lmforge.cli import main

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    code = main(['export', '--model', qwen2_dir, '--push_to_hub', 'true', '--hub_model_id', 'me/tiny', '--use_hf'])
    err = capsys.readouterr().err
    assert code == 2
    assert 'HF_HUB_OFFLINE=1' in err and 'hf upload me/tiny' in err


def test_push_to_hub_needs_a_repo_id(qwen2_dir):
    from lmforge import export
    from lmforge.errors import ArgumentError

    with pytest.raises(ArgumentError, match='hub_model_id'):
        export(model=qwen2_dir, push_to_hub=True)


def test_push_of_an_empty_folder(tmp_path):
    from lmforge.export.hub import push_to_hub

    with pytest.raises(ModelError, match='nothing to upload'):
        push_to_hub(str(tmp_path), 'me/x', use_hf=True)


def test_ollama_for_a_plain_model_points_at_its_directory(qwen2_dir):
    """No adapters, no GGUF: nothing is converted; the Modelfile (next to the model) imports the safetensors."""
    from lmforge import export

    out = export(model=qwen2_dir, to_ollama=True)
    assert out['output_dir'] == qwen2_dir.rstrip('/') + '-ollama'
    lines = open(os.path.join(out['output_dir'], 'Modelfile'), encoding='utf-8').read().splitlines()
    assert lines[0] == f'FROM {os.path.abspath(qwen2_dir)}' and lines[-1] == 'PARAMETER stop "<|im_end|>"'


GO_RENDER = '''package main

import (
	"encoding/json"
	"os"
	"text/template"
)

func main() {
	var in struct {
		Template string
		Messages []struct{ Role, Content string }
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("t").Parse(in.Template))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": in.Messages}); err != nil {
		panic(err)
	}
}
'''


@pytest.mark.skipif(__import__('shutil').which('go') is None, reason='needs the Go toolchain (Ollama templates are '
                                                                     'Go text/template)')
def test_go_template_renders_like_the_chat_template_in_go(tmp_path, tokenizer):
    """Rendered by Go's own text/template (what Ollama runs), the Modelfile template gives the Jinja template's text."""
    import json
    import subprocess

    from lmforge.export.ollama import go_template, turn_format

    (tmp_path / 'main.go').write_text(GO_RENDER)
    subprocess.run(['go', 'mod', 'init', 'render'], cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(['go', 'build', '-o', 'render', '.'], cwd=tmp_path, check=True, capture_output=True)
    template = go_template(turn_format(tokenizer))
    for messages in ([{'role': 'user', 'content': 'Hi'}],
                     [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'},
                      {'role': 'assistant', 'content': 'Hello {{x}}'}, {'role': 'user', 'content': 'Again'}]):
        got = subprocess.run([str(tmp_path / 'render')], input=json.dumps({'Template': template, 'Messages': [
            {'Role': m['role'], 'Content': m['content']} for m in messages]}), capture_output=True, text=True,
            check=True).stdout
        assert got == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
