"""`lmforge estimate`: the activation model against memory measured on CPU, and the command end to end.

There is no GPU here, so the activation terms are checked against what torch really allocates on CPU in bf16 (the
same autograd graph and saved tensors as on a GPU; sdpa's CPU flash kernel saves what the CUDA one does):
  saved  the distinct tensors autograd saves during the forward (a saved-tensors hook), vs ``saved_by_model``;
  peak   the live-memory peak of forward + loss + backward from torch's profiler (gradients allocated beforehand,
         so the peak is activations and transients only), vs ``activations_no_ckpt`` / ``activations_ckpt``.
The measurements are kept in tests/assets/estimate_measurements.json (regenerate: python -m tests.tuners.test_estimate);
one small case is re-measured live so the stored numbers cannot go stale unnoticed.
"""
from __future__ import annotations

import json
import os

import pytest

ASSET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets',
                     'estimate_measurements.json')
QWEN_GQA = dict(arch='qwen2', vocab_size=1000, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
LLAMA_MHA = dict(arch='llama', vocab_size=2000, hidden_size=192, intermediate_size=512, num_hidden_layers=3,
                 num_attention_heads=6, num_key_value_heads=6, tie_word_embeddings=True)
QWEN_LONG = dict(arch='qwen2', vocab_size=512, hidden_size=128, intermediate_size=448, num_hidden_layers=6,
                 num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)
CASES = [
    dict(name='qwen2-gqa full', model=QWEN_GQA, tuner='full', batch=2, length=128),
    dict(name='qwen2-gqa lora', model=QWEN_GQA, tuner='lora', batch=2, length=128),
    dict(name='llama-mha full', model=LLAMA_MHA, tuner='full', batch=2, length=128),
    dict(name='llama-mha lora', model=LLAMA_MHA, tuner='lora', batch=2, length=128),
    dict(name='qwen2-mqa full 1k', model=QWEN_LONG, tuner='full', batch=1, length=1024),
    dict(name='qwen2-mqa lora 1k', model=QWEN_LONG, tuner='lora', batch=1, length=1024),
    dict(name='qwen2-gqa full packed', model=QWEN_GQA, tuner='full', batch=1, length=256, packed=True),
]
TOLERANCE = 0.15


def _config(spec):
    import transformers

    spec = dict(spec)
    cls = {'qwen2': transformers.Qwen2Config, 'llama': transformers.LlamaConfig}[spec.pop('arch')]
    return cls(**spec)


def _estimate(case, checkpointing: bool):
    from lmforge.args.estimate import EstimateArgs
    from lmforge.args.parse import from_kwargs
    from lmforge.estimate import estimate_memory

    args = from_kwargs(EstimateArgs, model='measured', tuner_type=case['tuner'], max_length=case['length'],
                       per_device_train_batch_size=case['batch'], gradient_checkpointing=checkpointing,
                       torch_dtype='bfloat16', lora_rank=8, lora_dropout=0.0, padding_free=case.get('packed', False))
    return estimate_memory(args, _config(case['model']))[0]


def measure(case) -> dict:
    """Saved bytes and peak activation bytes of one bf16 training step of ``case`` on CPU (LoRA under bf16 autocast
    with fp32 adapters, as the Trainer runs it on a GPU; dropout 0 because CPU dropout keeps a float mask where CUDA
    keeps a bool one)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from lmforge.estimate import measure_peak_bytes, measure_saved_bytes

    config = _config(case['model'])
    out = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation='sdpa')
        autocast = None
        if case['tuner'] == 'lora':
            from peft import LoraConfig, get_peft_model
            model = get_peft_model(model, LoraConfig(r=8, target_modules='all-linear', lora_dropout=0.0))
            autocast = torch.bfloat16
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
        ids = torch.randint(0, config.vocab_size, (case['batch'], case['length']))
        batch = {'input_ids': ids}
        if case.get('packed'):  # padding-free: two samples in one row, attention per sample as `lmforge sft` runs it
            from lmforge.train.varlen import enable_varlen_attention

            half = case['length'] // 2
            batch['position_ids'] = torch.cat([torch.arange(half), torch.arange(case['length'] - half)])[None]
            batch['cu_seq_lens_q'] = torch.tensor([0, half, case['length']], dtype=torch.int32)
            assert enable_varlen_attention(model)
        if not checkpointing:
            out['saved'] = measure_saved_bytes(model, batch, autocast)

        def step():
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast is not None):
                logits = model(**batch, use_cache=False).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
                del logits
            loss.backward()

        step()  # gradients now exist: the measured peak is activations and transients only
        out['peak_ckpt' if checkpointing else 'peak'] = measure_peak_bytes(step)
    return out


def _stored():
    with open(ASSET) as f:
        return json.load(f)


def test_activation_model_within_15_percent_of_measured():
    stored = _stored()
    assert len(stored['cases']) >= 3
    for case in stored['cases']:
        est = _estimate(case, False)  # carries both activation terms, with and without checkpointing
        m = case['measured']
        pairs = {'saved': (est.saved_by_model, m['saved']), 'peak': (est.activations_no_ckpt, m['peak']),
                 'peak with checkpointing': (est.activations_ckpt, m['peak_ckpt'])}
        for what, (predicted, measured) in pairs.items():
            assert abs(predicted / measured - 1) <= TOLERANCE, (case['name'], what, predicted, measured)


def test_stored_measurements_are_current():
    """Re-measure the smallest case now: the stored numbers still describe this torch/transformers."""
    stored = {c['name']: c for c in _stored()['cases']}['llama-mha lora']
    now = measure(stored)
    for key, value in now.items():
        assert abs(value / stored['measured'][key] - 1) <= 0.05, (key, value, stored['measured'][key])


def test_estimate_command_on_a_7b_config(tmp_path, capsys):
    from transformers import Qwen2Config

    from lmforge.cli import main

    Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False).save_pretrained(tmp_path)
    common = ['--model', str(tmp_path), '--max_length', '4096', '--per_device_train_batch_size', '4']

    def run(*extra):
        assert main(['estimate', *common, *extra]) == 0
        return capsys.readouterr().out

    def gib(text, row):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(row))
        return float(line.split()[-2] if line.rstrip().endswith('GiB') else line.split()[-3])

    lora = run('--tuner_type', 'lora')
    assert '7.616 B parameters' in lora or '7.63' in lora
    assert 14.0 < gib(lora, 'weights') < 14.5  # 7.6 B bf16 parameters
    assert gib(lora, 'activations, checkpointing on') < gib(lora, 'activations, checkpointing off')
    assert 'fits' in lora and '80 GB' in lora and '141 GB' in lora
    qlora = run('--tuner_type', 'lora', '--quant_bits', '4')
    assert gib(qlora, 'weights') < 0.4 * gib(lora, 'weights')
    assert gib(qlora, 'peak') < gib(lora, 'peak')
    full = run('--tuner_type', 'full', '--gradient_checkpointing', 'true')
    zero3 = run('--tuner_type', 'full', '--deepspeed', 'zero3', '--nproc_per_node', '8')
    assert gib(full, 'optimizer states') == pytest.approx(4 * 7.616e9 / 2 ** 30, rel=0.01)  # bf16 AdamW states
    assert gib(zero3, 'optimizer states') == pytest.approx(12 * 7.616e9 / 8 / 2 ** 30, rel=0.01)
    assert gib(zero3, 'weights') < 0.3 * gib(full, 'weights')
    assert 'ZeRO-3' in zero3


def test_estimate_needs_no_weights(qwen2_dir, tmp_path, capsys):
    """The config alone is enough: a directory holding only config.json."""
    import shutil

    from lmforge.cli import main

    shutil.copy(os.path.join(qwen2_dir, 'config.json'), tmp_path / 'config.json')
    assert main(['estimate', '--model', str(tmp_path / 'config.json'), '--tuner_type', 'adapter',
                 '--max_length', '64']) == 0
    assert 'peak (torch max allocated)' in capsys.readouterr().out


def regenerate() -> None:
    import torch
    import transformers

    torch.set_num_threads(1)
    cases = [{**case, 'measured': measure(case)} for case in CASES]
    with open(ASSET, 'w') as f:
        json.dump({'about': 'bytes measured on CPU by tests/tuners/test_estimate.py:measure (bf16; saved = distinct '
                            'tensors autograd saves in the forward, peak = profiler live-memory peak of forward + '
                            'loss + backward above the allocated gradients)',
                   'torch': torch.__version__, 'transformers': transformers.__version__, 'cases': cases}, f, indent=1)
    for case in cases:
        est, m = _estimate(case, False), case['measured']
        print(f"{case['name']:24} saved {est.saved_by_model / m['saved']:.3f} "
              f"peak {est.activations_no_ckpt / m['peak']:.3f} ckpt {est.activations_ckpt / m['peak_ckpt']:.3f}")


if __name__ == '__main__':
    regenerate()
