"""Quantize a (merged) model with the field's libraries, then measure what it cost.

awq  -> llm-compressor's AWQModifier (W4A16, compressed-tensors format: transformers and vLLM load it)
gptq -> gptqmodel (GPTQ format: transformers with gptqmodel/optimum, vLLM)
bnb  -> bitsandbytes through transformers (NF4 with double quantization, or LLM.int8; transformers loads it)
fp8  -> llm-compressor's FP8_DYNAMIC scheme (per-channel weights, dynamic per-token activations; vLLM, transformers)

All four need a CUDA GPU. The report compares the quantized model with the original on the calibration rows (or
the given rows / built-in prompts): perplexity of both, mean and max |logit difference| and mean KL divergence.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

from lmforge.errors import ModelError

LIBRARIES = {'awq': ('llmcompressor', 'llmcompressor'), 'gptq': ('gptqmodel', 'gptqmodel'),
             'bnb': ('bitsandbytes', 'bitsandbytes'), 'fp8': ('llmcompressor', 'llmcompressor')}


def log(msg: str) -> None:
    print(f'[lmforge export] {msg}', flush=True)


def check_environment(method: str) -> None:
    """A clear error before any loading: the library is installed and a CUDA GPU is there."""
    module, package = LIBRARIES[method]
    if importlib.util.find_spec(module) is None:
        raise ModelError(f'--quant_method {method} needs the {package} package: pip install {package} '
                         f'(on a machine with a CUDA GPU)')
    import torch

    if not torch.cuda.is_available():
        raise ModelError(f'--quant_method {method} needs a CUDA GPU, and none is visible here '
                         '(GGUF quantization runs on a CPU: --to_gguf true --gguf_type q4_k_m)')


def calibration_texts(specs: list[str], tokenizer, n: int, seed: int = 42) -> list[str]:
    """Rows of --dataset as the model sees them: chat rows rendered through the chat template, text rows as is."""
    from lmforge.data import read_dataset
    from lmforge.data.formats import RowError, normalize
    from lmforge.errors import DataError
    from lmforge.templates import render

    texts = []
    for spec in specs:
        for row in read_dataset(spec, seed=seed):
            data = row.data
            if isinstance(data.get('text'), str) and 'messages' not in data:
                texts.append(data['text'])
            else:
                try:
                    messages = normalize(data, 'sft')['messages']
                except RowError as e:
                    raise DataError(f'{row.where}: {e.field}: {e.problem}') from None
                texts.append(render(tokenizer, messages) if tokenizer.chat_template else
                             '\n'.join(m['content'] for m in messages if isinstance(m.get('content'), str)))
            if len(texts) >= n:
                return texts
    if not texts:
        raise DataError(f'--dataset {" ".join(specs)}: no rows')
    return texts


def quantize(src_dir: str, out_dir: str, method: str, bits: int, texts: list[str] | None, max_length: int,
             tokenizer) -> None:
    """Quantize ``src_dir`` into ``out_dir`` (tokenizer, chat template and generation config carried over)."""
    check_environment(method)
    log(f'quantizing {src_dir} with {method} to {bits} bits -> {out_dir}')
    if method == 'bnb':
        _bnb(src_dir, out_dir, bits)
    elif method == 'gptq':
        _gptq(src_dir, out_dir, bits, texts, max_length)
    elif method == 'awq':
        _llmcompressor(src_dir, out_dir, 'awq', texts, max_length, tokenizer)
    elif method == 'fp8':
        _llmcompressor(src_dir, out_dir, 'fp8', texts, max_length, tokenizer)
    else:
        raise ModelError(f'--quant_method: unknown method {method!r}')
    _carry_files(src_dir, out_dir, tokenizer)


def _carry_files(src_dir: str, out_dir: str, tokenizer) -> None:
    import shutil

    tokenizer.save_pretrained(out_dir)
    gen = os.path.join(src_dir, 'generation_config.json')
    if os.path.isfile(gen):
        shutil.copy(gen, os.path.join(out_dir, 'generation_config.json'))


def _bnb(src_dir: str, out_dir: str, bits: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(src_dir, quantization_config=config, dtype=torch.bfloat16,
                                                 device_map='auto')
    model.save_pretrained(out_dir)


def _gptq(src_dir: str, out_dir: str, bits: int, texts: list[str], max_length: int) -> None:
    from gptqmodel import GPTQModel, QuantizeConfig

    model = GPTQModel.load(src_dir, QuantizeConfig(bits=bits, group_size=128))
    tokenizer = model.tokenizer
    calibration = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length)
        calibration.append({'input_ids': enc['input_ids'], 'attention_mask': enc['attention_mask']})
    model.quantize(calibration, batch_size=1)
    model.save(out_dir)


def _llmcompressor(src_dir: str, out_dir: str, method: str, texts: list[str] | None, max_length: int,
                   tokenizer) -> None:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.bfloat16, device_map='auto')
    if method == 'fp8':
        from llmcompressor.modifiers.quantization import QuantizationModifier
        recipe = [QuantizationModifier(targets='Linear', scheme='FP8_DYNAMIC', ignore=['lm_head'])]
        oneshot(model=model, recipe=recipe)
    else:
        from datasets import Dataset
        from llmcompressor.modifiers.awq import AWQModifier
        recipe = [AWQModifier(ignore=['lm_head'], scheme='W4A16_ASYM', targets=['Linear'])]
        encoded = [tokenizer(t, truncation=True, max_length=max_length, add_special_tokens=False) for t in texts]
        data = Dataset.from_list([{'input_ids': e['input_ids'], 'attention_mask': e['attention_mask']}
                                  for e in encoded])
        oneshot(model=model, dataset=data, recipe=recipe, max_seq_length=max_length,
                num_calibration_samples=len(encoded))
    model.save_pretrained(out_dir, save_compressed=True)


def quality_report(reference, candidate, tokenizer, texts: list[str], max_length: int = 512) -> dict:
    """Perplexity of both models on ``texts`` and how far the candidate's next-token distributions drift from the
    reference's: mean/max |logit difference| and mean KL(reference || candidate) per token."""
    import torch

    nll = {'reference': 0.0, 'candidate': 0.0}
    n_tokens = 0
    kl_sum, diff_sum, diff_max, n_positions = 0.0, 0.0, 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=False)['input_ids']
            if len(ids) < 2:
                continue
            outs = {}
            for name, model in (('reference', reference), ('candidate', candidate)):
                device = next(model.parameters()).device
                t = torch.tensor([ids], device=device)
                outs[name] = model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0].float().cpu()
            target = torch.tensor(ids[1:])
            for name, logits in outs.items():
                lp = torch.log_softmax(logits[:-1], dim=-1)
                nll[name] += float(-lp[torch.arange(len(target)), target].sum())
            n_tokens += len(target)
            ref_lp = torch.log_softmax(outs['reference'], dim=-1)
            cand_lp = torch.log_softmax(outs['candidate'], dim=-1)
            kl_sum += float((ref_lp.exp() * (ref_lp - cand_lp)).sum())
            d = (outs['reference'] - outs['candidate']).abs()
            diff_sum += float(d.mean(dim=-1).sum())
            diff_max = max(diff_max, float(d.max()))
            n_positions += d.shape[0]
    if not n_tokens:
        raise ModelError('the drift report needs rows of at least two tokens')
    return {'ppl_reference': math.exp(nll['reference'] / n_tokens),
            'ppl_candidate': math.exp(nll['candidate'] / n_tokens),
            'mean_abs_logit_diff': diff_sum / n_positions, 'max_abs_logit_diff': diff_max,
            'mean_kl': kl_sum / n_positions, 'n_texts': len(texts), 'n_tokens': n_tokens}


def drift_report(src_dir: str, quant_dir: str, tokenizer, texts: list[str], max_length: int) -> dict:
    """Load the original (bf16) and the quantized model one after the other on the GPU and compare them."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.bfloat16, device_map='auto').eval()
    candidate = AutoModelForCausalLM.from_pretrained(quant_dir, device_map='auto').eval()
    try:
        report = quality_report(reference, candidate, tokenizer, texts, max_length)
    finally:
        del reference, candidate
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    log(f'quality: perplexity {report["ppl_reference"]:.3f} -> {report["ppl_candidate"]:.3f}, mean |logit diff| '
        f'{report["mean_abs_logit_diff"]:.4f} (max {report["max_abs_logit_diff"]:.3f}), mean KL '
        f'{report["mean_kl"]:.5f} on {report["n_texts"]} rows / {report["n_tokens"]} tokens')
    with open(os.path.join(quant_dir, 'lmforge_quant_report.json'), 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)
    return report
