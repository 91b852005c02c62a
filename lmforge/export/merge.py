"""Merge LoRA adapters into the base weights, save a plain transformers model, and prove the merge is exact.

The check: logits of the adapter model (base + LoRA computed separately) against the merged model, on a few chat
prompts, first in memory and then reloaded from the saved files. In float32 the largest |difference| must stay under
1e-4 (a correct merge is ~1e-6 there). In bfloat16/float16 every weight is rounded to 8/11 significant bits once
more when base and delta are summed, so the merged model drifts by up to ~1% of the logits' range; the bound there is
2% of the largest |logit| (`tolerance`). Weights saved in a lower precision than they were merged in are checked the
same way against that precision's bound.
"""
from __future__ import annotations

import json
import os
import shutil

from lmforge.errors import ModelError

# Prompts the merged and the adapter model must agree on (rendered with the chat template when there is one).
PROBE_PROMPTS = ['Hello! Who are you?', 'Write a short poem about the sea.', 'What is 17 * 23? Think step by step.',
                 'Traduis en français : the weather is nice today.', '用一句话介绍一下你自己。']
FP32_TOLERANCE = 1e-4
LOW_PRECISION_RELATIVE = 0.02


def log(msg: str) -> None:
    print(f'[lmforge export] {msg}', flush=True)


def tolerance_for(dtype, logits_scale: float, override: float | None = None) -> float:
    import torch

    if override is not None:
        return override
    if dtype == torch.float32:
        return FP32_TOLERANCE
    return LOW_PRECISION_RELATIVE * max(1.0, logits_scale)


def describe_adapter(model) -> str:
    """'LoRA', 'DoRA', 'rsLoRA', ... of the (first) adapter of a PeftModel."""
    cfg = next(iter(model.peft_config.values()))
    kind = str(getattr(cfg.peft_type, 'value', cfg.peft_type))
    if kind == 'LORA':
        parts = [n for n, on in (('DoRA', getattr(cfg, 'use_dora', False)), ('rsLoRA', getattr(cfg, 'use_rslora',
                                                                                               False))) if on]
        init = getattr(cfg, 'init_lora_weights', True)
        if isinstance(init, str) and init not in ('gaussian',):
            parts.append(f'{init} init')
        return 'LoRA' + (f' ({", ".join(parts)})' if parts else '')
    return kind


def check_mergeable(model) -> None:
    """A clear error for adapters that cannot fold into the weights (prompt/prefix tuning, ...)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return
    for name, cfg in model.peft_config.items():
        kind = str(getattr(cfg.peft_type, 'value', cfg.peft_type))
        if getattr(cfg, 'is_prompt_learning', False) or not hasattr(model.base_model, 'merge_and_unload'):
            raise ModelError(f'--merge_lora: the adapter {name!r} is {kind}, which adds virtual tokens or other '
                             'inputs instead of changing weights, so it cannot be merged into the base model. '
                             'Serve or infer it with --adapters instead.')


def probe_inputs(tokenizer, prompts: list[str] | None = None) -> list[list[int]]:
    """Token ids of the probe prompts: rendered as chat prompts when the tokenizer has a template."""
    from lmforge.templates import render_prompt

    out = []
    for p in prompts or PROBE_PROMPTS:
        if tokenizer.chat_template:
            text = render_prompt(tokenizer, [{'role': 'user', 'content': p}])
            ids = tokenizer(text, add_special_tokens=False)['input_ids']
        else:
            ids = tokenizer(p)['input_ids']
        out.append(ids[:256])
    return out


def logits_of(model, inputs: list[list[int]]) -> list:
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for ids in inputs:
            t = torch.tensor([ids], device=device)
            out.append(model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0].float().cpu())
    return out


def max_abs_diff(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def saved_dtype(base_dir: str, torch_dtype: str):
    """The dtype the merged weights are saved in: --torch_dtype, or with `auto` the base model's own."""
    import torch

    if torch_dtype != 'auto':
        return getattr(torch, torch_dtype)
    with open(os.path.join(base_dir, 'config.json'), encoding='utf-8') as f:
        config = json.load(f)
    name = config.get('dtype') or config.get('torch_dtype') or 'float32'
    return getattr(torch, str(name).replace('torch.', ''), torch.float32)


def save_tokenizer_and_configs(out_dir: str, tokenizer, generation_config_dir: str, fallback_generation) -> None:
    """The tokenizer with its chat template, and the generation config whose eos are the template's end-of-turn
    tokens (what makes the saved model stop where the fine-tuned one did)."""
    import copy

    from transformers import GenerationConfig

    from lmforge.templates import stop_token_ids

    tokenizer.save_pretrained(out_dir)
    try:
        gen = GenerationConfig.from_pretrained(generation_config_dir)
    except OSError:
        gen = copy.deepcopy(fallback_generation)
    if tokenizer.chat_template:
        gen.eos_token_id = stop_token_ids(tokenizer, gen)
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(out_dir)


def merge_lora(bundle, out_dir: str, torch_dtype: str = 'auto', template: str | None = None,
               trust_remote_code: bool = False, tolerance: float | None = None, device: str | None = None) -> dict:
    """Merge ``bundle.adapters`` into ``bundle.base_dir``; write ``out_dir`` (safetensors, tokenizer + chat template,
    generation config); verify it. Returns the parity report (also written to out_dir/lmforge_export.json)."""
    import torch

    from lmforge.models import load_model, load_tokenizer
    from lmforge.templates import apply_template

    if not bundle.adapters:
        raise ModelError('--merge_lora: no adapters to merge: pass --adapters CKPT or a LoRA checkpoint as --model')
    compute = 'float32' if torch_dtype == 'auto' else torch_dtype
    compute_dtype = getattr(torch, compute)
    save_dtype = saved_dtype(bundle.base_dir, torch_dtype)
    tokenizer = load_tokenizer(bundle.tokenizer_dir, trust_remote_code)
    template_source = apply_template(tokenizer, template)
    log(f'base {bundle.base_dir} + {len(bundle.adapters)} adapter(s): {", ".join(bundle.adapters)}')
    log(f'chat template: {template_source}')
    model = load_model(bundle.base_dir, torch_dtype=compute, device=device or 'cpu',
                       trust_remote_code=trust_remote_code, adapters=bundle.adapters)
    model.eval()
    check_mergeable(model)
    kind = describe_adapter(model)
    inputs = probe_inputs(tokenizer)
    reference = logits_of(model, inputs)
    scale = max(float(r.abs().max()) for r in reference)
    try:
        merged = model.merge_and_unload()
    except (ValueError, NotImplementedError, AttributeError, TypeError, RuntimeError) as e:
        raise ModelError(f'--merge_lora: PEFT cannot merge this {kind} adapter: {type(e).__name__}: {e}') from None
    merged.eval()
    in_memory = max_abs_diff(reference, logits_of(merged, inputs))
    tol = tolerance_for(compute_dtype, scale, tolerance)
    log(f'merge check ({kind}, {compute}): max |logit difference| adapter vs merged = {in_memory:.3g} '
        f'(tolerance {tol:.3g}, logits up to {scale:.3g})')
    if not in_memory <= tol:
        raise ModelError(f'--merge_lora: the merged model differs from the adapter model by {in_memory:.3g} in the '
                         f'logits (tolerance {tol:.3g} in {compute}); nothing was saved')

    tmp = out_dir.rstrip('/') + '.tmp-merge'
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if save_dtype != compute_dtype:
            merged.to(save_dtype)
        merged.config.use_cache = True
        merged.save_pretrained(tmp, max_shard_size='5GB')
        save_tokenizer_and_configs(tmp, tokenizer, bundle.tokenizer_dir, merged.generation_config)
        del merged, model
        reloaded = load_model(tmp, torch_dtype=compute, device=device or 'cpu', trust_remote_code=trust_remote_code)
        from_disk = max_abs_diff(reference, logits_of(reloaded, inputs))
        disk_tol = tolerance_for(save_dtype, scale, tolerance) if save_dtype != compute_dtype else tol
        save_name = str(save_dtype).replace('torch.', '')
        log(f'reloaded from disk ({save_name}): max |logit difference| = {from_disk:.3g} (tolerance {disk_tol:.3g})')
        if not from_disk <= disk_tol:
            raise ModelError(f'--merge_lora: the saved merged model differs from the adapter model by '
                             f'{from_disk:.3g} in the logits (tolerance {disk_tol:.3g}, saved as {save_name}); '
                             'nothing was saved')
        report = {'adapter_type': kind, 'base_model': bundle.base_dir, 'adapters': bundle.adapters,
                  'compute_dtype': compute, 'saved_dtype': save_name, 'max_abs_logit_diff_in_memory': in_memory,
                  'max_abs_logit_diff_from_disk': from_disk, 'tolerance': tol, 'saved_tolerance': disk_tol,
                  'max_abs_logit': scale, 'n_probe_prompts': len(inputs), 'chat_template': template_source}
        with open(os.path.join(tmp, 'lmforge_export.json'), 'w', encoding='utf-8') as f:
            json.dump({'merge': report}, f, indent=2, ensure_ascii=False)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f'merged model: {out_dir}')
    return report


def replace_dir(src: str, dst: str) -> None:
    """Move ``src`` to ``dst``; in an existing ``dst`` the old weights go and same-named files are replaced."""
    if not os.path.exists(dst):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        os.replace(src, dst)
        return
    for name in os.listdir(dst):  # shards of an earlier model would be read with the new ones
        if name.endswith(('.safetensors', '.bin', '.safetensors.index.json', '.bin.index.json')):
            os.remove(os.path.join(dst, name))
    for name in os.listdir(src):
        target = os.path.join(dst, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(src, name), target)
