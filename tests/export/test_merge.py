"""`lmforge export --merge_lora`: the merged model computes what base + adapter computed, loads in plain
transformers with the chat template and generation config, and adapters that cannot merge say so."""
from __future__ import annotations

import json
import os

import pytest
import torch

from lmforge.errors import ArgumentError, ModelError

PROMPTS = ['Code for abc', 'Code for hac', 'Hello there']


def reference_logits(base_dir: str, adapter_dir: str, tokenizer, prompts=PROMPTS) -> list:
    """Base + adapter through PEFT itself (not lmforge's loader), float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    return _logits(model, tokenizer, prompts)


def _logits(model, tokenizer, prompts=PROMPTS) -> list:
    out = []
    with torch.inference_mode():
        for p in prompts:
            text = tokenizer.apply_chat_template([{'role': 'user', 'content': p}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors='pt')['input_ids']
            out.append(model(input_ids=ids).logits[0].float())
    return out


def plain_load(path: str):
    """The merged directory with nothing but transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    return (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path),
            GenerationConfig.from_pretrained(path))


@pytest.mark.parametrize('kind', ['lora', 'dora', 'rslora'])
def test_merge_parity(kind, request, tmp_path, tokenizer):
    from lmforge import export
    from lmforge.models.loader import _adapter_base

    ckpt = request.getfixturevalue(f'{kind}_ckpt')
    base = _adapter_base(ckpt)
    out = export(adapters=[ckpt], merge_lora=True, output_dir=str(tmp_path / 'merged'), torch_dtype='float32')
    merge = out['merge']
    assert merge['adapter_type'] == {'lora': 'LoRA', 'dora': 'LoRA (DoRA)', 'rslora': 'LoRA (rsLoRA)'}[kind]
    assert merge['max_abs_logit_diff_in_memory'] < 1e-4 and merge['max_abs_logit_diff_from_disk'] < 1e-4

    model, tok, gen = plain_load(str(tmp_path / 'merged'))
    assert not any('lora' in n for n, _ in model.named_parameters())
    ref = reference_logits(base, ckpt, tokenizer)
    base_model, _, _ = plain_load(base)
    got, untouched = _logits(model, tok), _logits(base_model, tok)
    assert max(float((a - b).abs().max()) for a, b in zip(ref, got)) < 1e-4
    assert max(float((a - b).abs().max()) for a, b in zip(ref, untouched)) > 1e-3  # the adapter does change things
    # the chat template and the stop tokens travel with the weights
    assert tok.chat_template == tokenizer.chat_template
    assert tokenizer.convert_tokens_to_ids('<|im_end|>') in (gen.eos_token_id if isinstance(gen.eos_token_id, list)
                                                            else [gen.eos_token_id])
    record = json.loads((tmp_path / 'merged' / 'lmforge_export.json').read_text())
    assert record['merge']['saved_dtype'] == 'float32'


def test_merge_bf16_within_documented_tolerance(lora_ckpt, tmp_path):
    from lmforge import export

    out = export(adapters=[lora_ckpt], merge_lora=True, output_dir=str(tmp_path / 'm'), torch_dtype='bfloat16')
    merge = out['merge']
    assert merge['saved_dtype'] == 'bfloat16'
    assert merge['tolerance'] == pytest.approx(0.02 * max(1.0, merge['max_abs_logit']))
    assert merge['max_abs_logit_diff_from_disk'] <= merge['tolerance']
    config = json.loads((tmp_path / 'm' / 'config.json').read_text())
    assert config.get('dtype', config.get('torch_dtype')) == 'bfloat16'


def test_model_given_as_lora_checkpoint_and_default_output_dir(lora_ckpt, tmp_path):
    """--model may be the LoRA checkpoint itself; the result goes next to it as <ckpt>-merged."""
    import shutil

    from lmforge import export

    ckpt = shutil.copytree(lora_ckpt, tmp_path / 'checkpoint-6')
    out = export(model=str(ckpt), merge_lora=True)
    assert out['output_dir'] == str(tmp_path / 'checkpoint-6-merged')
    assert os.path.isfile(tmp_path / 'checkpoint-6-merged' / 'model.safetensors')
    with pytest.raises(ArgumentError, match='exist_ok'):
        export(model=str(ckpt), merge_lora=True)  # the output dir exists now


def test_unmergeable_adapter_is_a_clear_error(prompt_tuning_ckpt, tmp_path, capsys):
    from lmforge.cli import main

    code = main(['export', '--adapters', prompt_tuning_ckpt, '--merge_lora', 'true', '--output_dir',
                 str(tmp_path / 'm')])
    err = capsys.readouterr().err
    assert code == 2
    assert 'PROMPT_TUNING' in err and 'cannot be merged' in err
    assert not os.path.exists(tmp_path / 'm')


def test_merge_needs_an_adapter(qwen2_dir, tmp_path):
    from lmforge import export

    with pytest.raises(ArgumentError, match='nothing to merge'):
        export(model=qwen2_dir, merge_lora=True, output_dir=str(tmp_path / 'm'))


def test_merge_that_drifts_fails_and_saves_nothing(lora_ckpt, tmp_path):
    from lmforge import export

    with pytest.raises(ModelError, match='nothing was saved'):
        export(adapters=[lora_ckpt], merge_lora=True, output_dir=str(tmp_path / 'm'), torch_dtype='bfloat16',
               merge_tolerance=1e-9)
    assert not os.path.exists(tmp_path / 'm')
