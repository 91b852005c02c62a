"""--quant_method: argument rules and the drift report run everywhere; the quantizers themselves need a CUDA GPU
(bitsandbytes, gptqmodel, llm-compressor) and run only there."""
from __future__ import annotations

import json
import os

import pytest
import torch

from lmforge.errors import ArgumentError, ModelError
from tests.conftest import fact_rows, write_jsonl

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@pytest.mark.parametrize('kwargs,match', [
    (dict(quant_method='awq'), 'calibration data'),
    (dict(quant_method='fp8', quant_bits=4), '8-bit weights, not 4'),
    (dict(quant_method='bnb', to_gguf=True), 'full-precision'),
    (dict(quant_bits=4), 'needs --quant_method'),
    (dict(), 'nothing to do'),
])
def test_quant_argument_rules(kwargs, match, qwen2_dir):
    from lmforge import export

    with pytest.raises(ArgumentError, match=match):
        export(model=qwen2_dir, **kwargs)


def test_default_bits():
    from lmforge.args import from_kwargs
    from lmforge.args.export import ExportArgs

    assert from_kwargs(ExportArgs, model='m', quant_method='fp8').quant_bits == 8
    assert from_kwargs(ExportArgs, model='m', quant_method='bnb').quant_bits == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without a GPU')
def test_quantizing_without_a_gpu_says_so(qwen2_dir, tmp_path):
    from lmforge import export

    with pytest.raises(ModelError, match=r'needs (a CUDA GPU|the \w+ package)'):
        export(model=qwen2_dir, quant_method='bnb', output_dir=str(tmp_path / 'q'))
    assert not os.path.exists(tmp_path / 'q')


def test_drift_report(qwen2_dir, tokenizer):
    """Identical models: same perplexity, zero drift; a perturbed copy: positive drift and KL."""
    from transformers import AutoModelForCausalLM

    from lmforge.export.quantize import quality_report

    ref = AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32).eval()
    same = AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32).eval()
    texts = ['<|im_start|>user\nLast letter: abcd<|im_end|>\n<|im_start|>assistant\nd<|im_end|>\n', 'The quick fox']
    r = quality_report(ref, same, tokenizer, texts)
    assert r['ppl_reference'] == pytest.approx(r['ppl_candidate']) and r['ppl_reference'] > 1
    assert r['max_abs_logit_diff'] == 0 and r['mean_kl'] == pytest.approx(0, abs=1e-7)
    with torch.no_grad():
        for p in same.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    r = quality_report(ref, same, tokenizer, texts)
    assert r['max_abs_logit_diff'] > 0 and r['mean_kl'] > 0 and r['n_tokens'] == sum(
        len(tokenizer(t, add_special_tokens=False)['input_ids']) - 1 for t in texts)


def test_calibration_texts_render_chat_rows(tmp_path, tokenizer):
    from lmforge.export.quantize import calibration_texts

    path = write_jsonl(tmp_path / 'c.jsonl', fact_rows(3) + [{'text': 'plain text row'}])
    texts = calibration_texts([path], tokenizer, n=10)
    assert texts[0] == tokenizer.apply_chat_template(fact_rows(1)[0]['messages'], tokenize=False)
    assert texts[-1] == 'plain text row' and len(texts) == 4
    assert len(calibration_texts([path], tokenizer, n=2)) == 2


# ---- on a GPU machine only: each method end to end on a 256-wide model ----

@pytest.fixture(scope='module')
def calib(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp('calib') / 'calib.jsonl', fact_rows(32))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize('method,bits', [('bnb', 4), ('bnb', 8), ('gptq', 4), ('awq', 4), ('fp8', 8)])
def test_quantize_on_gpu(method, bits, wide_qwen2_dir, calib, tmp_path):
    pytest.importorskip({'bnb': 'bitsandbytes', 'gptq': 'gptqmodel', 'awq': 'llmcompressor',
                         'fp8': 'llmcompressor'}[method])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge import export

    out = export(model=wide_qwen2_dir, quant_method=method, quant_bits=bits, dataset=[calib],
                 output_dir=str(tmp_path / 'q'), quant_n_samples=16, max_length=128)
    report = out['quant']
    assert report['ppl_candidate'] < 2 * report['ppl_reference'] and report['mean_kl'] < 0.5
    assert json.loads((tmp_path / 'q' / 'lmforge_quant_report.json').read_text())['n_tokens'] > 0
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / 'q'), device_map='cuda')
    tok = AutoTokenizer.from_pretrained(str(tmp_path / 'q'))
    assert tok.chat_template
    ids = tok('Code for abc', return_tensors='pt').to('cuda')
    assert model.generate(**ids, max_new_tokens=4).shape[1] > ids['input_ids'].shape[1]
