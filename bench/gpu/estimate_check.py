"""`lmforge estimate` against the memory training really takes on this GPU (issue 6: within 15 % for >= 3 configs).

    python bench/gpu/estimate_check.py --out $OUT/estimate_measurements_gpu.json       # on the GPU: GPU_CASES
    python bench/gpu/estimate_check.py --out /tmp/e.json --cases cpu                   # the CPU test's cases, here

Per case (a model config, a tuner, batch x length; random weights and token ids), two measurements:
1. the activation terms, measured as tests/tuners/test_estimate.py:measure measures them on CPU (saved: the distinct
   tensors autograd saves in the forward; peak / peak_ckpt: the live-memory peak of forward + loss + backward above
   the gradients already allocated, without / with gradient checkpointing), on CUDA from the allocator's own
   statistics. They are written in the schema of tests/assets/estimate_measurements.json (`measured`), so that
   test's check reads this file as it reads the CPU one;
2. the whole peak the estimate predicts (`peak`: weights + optimizer states + max(activations, gradients + the
   optimizer step's temporary), what `lmforge estimate` prints as "peak (torch max allocated)"):
   torch.cuda.max_memory_allocated() over three AdamW steps of a fresh model (`measured_total`), as the Trainer runs
   them: bf16 weights, fp32 LoRA adapters under bf16 autocast, gradient clipping, foreach AdamW.
Issue 6 asks for the peak within 15 % (the test's tolerance) for >= 3 configs (`total_within_tolerance`, the exit
status); `within_tolerance` also holds the activation terms to it. The predictions come from
lmforge.estimate.estimate_memory with the test's own arguments (tests/tuners/test_estimate.py:_estimate).
"""
import argparse
import gc
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

QWEN25_05B = dict(arch='qwen2', vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
QWEN25_15B = dict(arch='qwen2', vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)
LLAMA32_1B = dict(arch='llama', vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)
GPU_CASES = [  # predicted peaks 6-40 GiB: all fit an 80 GB H100
    dict(name='qwen2.5-0.5b lora 4x1024', model=QWEN25_05B, tuner='lora', batch=4, length=1024),
    dict(name='qwen2.5-0.5b full 2x1024', model=QWEN25_05B, tuner='full', batch=2, length=1024),
    dict(name='qwen2.5-1.5b lora 8x1024', model=QWEN25_15B, tuner='lora', batch=8, length=1024),
    dict(name='qwen2.5-1.5b lora packed 1x8192', model=QWEN25_15B, tuner='lora', batch=1, length=8192, packed=True),
    dict(name='llama3.2-1b full 2x2048', model=LLAMA32_1B, tuner='full', batch=2, length=2048),
]


def free(device):
    gc.collect()
    if device == 'cuda':
        import torch
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def new_model(case, device):
    """The case's model with random weights in bf16 (LoRA r 8 on all linear layers for 'lora'); whether the step
    runs under bf16 autocast (LoRA: the adapters are fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.tuners.test_estimate import _config

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(_config(case['model']), dtype=torch.bfloat16,
                                                 attn_implementation='sdpa')
    if case['tuner'] == 'lora':
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, target_modules='all-linear', lora_dropout=0.0))
    model.train()
    return model, case['tuner'] == 'lora'


def new_batch(case, model, device):
    """Random token ids; 'packed': two samples in one row, attention per sample as `lmforge sft` runs it."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (case['batch'], case['length']), generator=g).to(device)
    batch = {'input_ids': ids}
    if case.get('packed'):
        from lmforge.train.varlen import enable_varlen_attention

        half = case['length'] // 2
        batch['position_ids'] = torch.cat([torch.arange(half), torch.arange(case['length'] - half)])[None].to(device)
        batch['cu_seq_lens_q'] = torch.tensor([0, half, case['length']], dtype=torch.int32, device=device)
        assert enable_varlen_attention(model)
    return batch


def peak_above_now(step, device) -> int:
    """Peak bytes allocated while step() runs, above what was allocated before it."""
    import torch

    if device == 'cpu':
        from lmforge.estimate import measure_peak_bytes
        return measure_peak_bytes(step)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def train_step(model, batch, autocast, device, optimizer=None, params=None):
    import torch
    import torch.nn.functional as F

    ids = batch['input_ids']
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        logits = model(**batch, use_cache=False).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
        del logits
    loss.backward()
    if optimizer is not None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure_activations(case, device) -> dict:
    """tests/tuners/test_estimate.py:measure, on any device."""
    import torch

    from lmforge.estimate import measure_saved_bytes

    out = {}
    for checkpointing in (False, True):
        free(device)
        model, autocast = new_model(case, device)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
        batch = new_batch(case, model, device)
        if not checkpointing:
            out['saved'] = measure_saved_bytes(model, batch, torch.bfloat16 if autocast else None)
        train_step(model, batch, autocast, device)  # gradients now exist: the peak is activations and transients
        out['peak_ckpt' if checkpointing else 'peak'] = peak_above_now(
            lambda: train_step(model, batch, autocast, device), device)
        model = batch = None  # freed before the next model is built
    return out


def measure_total(case, device, checkpointing: bool, steps: int = 3) -> int:
    """Peak bytes of a fresh model trained `steps` AdamW steps: weights, gradients, states, activations."""
    import torch

    free(device)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    model, autocast = new_model(case, device)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    batch = new_batch(case, model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)  # the Trainer's adamw_torch (foreach on CUDA)

    def run():
        for _ in range(steps):
            train_step(model, batch, autocast, device, optimizer, params)

    if device == 'cuda':
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return weights + peak_above_now(run, device)  # CPU: the profiler sees only what the steps allocate


def check(case, device, tolerance) -> dict:
    from tests.tuners.test_estimate import _estimate

    t0 = time.time()
    measured = measure_activations(case, device)
    total = {'peak': measure_total(case, device, False), 'peak_ckpt': measure_total(case, device, True)}
    off, on = _estimate(case, False), _estimate(case, True)
    predicted = {'saved': off.saved_by_model, 'peak': off.activations_no_ckpt, 'peak_ckpt': off.activations_ckpt,
                 'total_peak': off.peak, 'total_peak_ckpt': on.peak}
    actual = {**measured, 'total_peak': total['peak'], 'total_peak_ckpt': total['peak_ckpt']}
    ratio = {k: round(predicted[k] / actual[k], 4) for k in predicted}
    return {**case, 'measured': measured, 'measured_total': total,
            'predicted': {k: int(v) for k, v in predicted.items()}, 'ratio_predicted_to_measured': ratio,
            'within_tolerance': all(abs(r - 1) <= tolerance for r in ratio.values()),
            'total_within_tolerance': all(abs(ratio[k] - 1) <= tolerance for k in ('total_peak', 'total_peak_ckpt')),
            'seconds': round(time.time() - t0, 1)}


def main():
    import torch
    import transformers

    from tests.tuners.test_estimate import CASES, TOLERANCE

    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='the JSON to write')
    p.add_argument('--cases', choices=('gpu', 'cpu', 'smoke'), default='gpu',
                   help="GPU_CASES; the CPU test's CASES; its one case re-measured live (a CPU smoke test)")
    p.add_argument('--only', default='', help='comma-separated case names (default: all)')
    a = p.parse_args()
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cpu':
        torch.set_num_threads(1)  # as the CPU test measures
    cases = {'gpu': GPU_CASES, 'cpu': CASES, 'smoke': [c for c in CASES if c['name'] == 'llama-mha lora']}[a.cases]
    if a.only:
        cases = [c for c in cases if c['name'] in a.only.split(',')]
    results = []
    for case in cases:
        try:
            results.append(check(case, device, TOLERANCE))
        except Exception as e:  # noqa: BLE001 - one case failing (out of memory, say) leaves the others' numbers
            results.append({**case, 'error': f'{type(e).__name__}: {str(e)[:300]}'})
        r = results[-1]
        print(json.dumps({k: r.get(k) for k in ('name', 'ratio_predicted_to_measured', 'within_tolerance', 'error',
                                                'seconds')}), flush=True)
        free(device)
    report = {
        'about': 'bench/gpu/estimate_check.py: measured = activation terms as tests/tuners/test_estimate.py:measure '
                 '(bf16; saved = distinct tensors autograd saves in the forward, peak = live-memory peak of forward + '
                 'loss + backward above the allocated gradients); measured_total = max allocated over 3 AdamW steps '
                 'of a fresh model (weights + gradients + optimizer states + activations); predicted = '
                 'lmforge.estimate.estimate_memory with the test\'s arguments',
        'torch': torch.__version__, 'transformers': transformers.__version__,
        'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu', 'tolerance': TOLERANCE,
        'cases': results}
    with open(a.out, 'w') as f:
        json.dump(report, f, indent=1)
    ok = [r for r in results if r.get('within_tolerance')]
    total_ok = [r for r in results if r.get('total_within_tolerance')]
    print(f'\n{len(total_ok)} of {len(results)} cases within {TOLERANCE:.0%} of the measured peak with checkpointing '
          f'off and on (issue 6 asks for >= 3); {len(ok)} on every term')
    print('| case | saved | act peak | act peak ckpt | total peak | total peak ckpt | measured total GiB |')
    print('| --- | ---: | ---: | ---: | ---: | ---: | ---: |')
    for r in results:
        if 'error' in r:
            print(f"| {r['name']} | {r['error'][:80]} | | | | | |")
            continue
        q = r['ratio_predicted_to_measured']
        print(f"| {r['name']} | {q['saved']:.3f} | {q['peak']:.3f} | {q['peak_ckpt']:.3f} | {q['total_peak']:.3f} | "
              f"{q['total_peak_ckpt']:.3f} | {r['measured_total']['peak'] / 2**30:.2f} / "
              f"{r['measured_total']['peak_ckpt'] / 2**30:.2f} |")
    print('(predicted / measured)')
    return 0 if len(total_ok) >= min(3, len(results)) else 1


if __name__ == '__main__':
    sys.exit(main())
