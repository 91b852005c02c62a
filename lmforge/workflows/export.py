"""`lmforge export`: merge -> quantize | GGUF -> Ollama Modelfile -> push, each step on the previous one's result.

The model to start from is --model (a directory, hub id, full checkpoint, or LoRA checkpoint whose base is found)
plus --adapters. Adapters are merged first whenever a later step needs plain weights (quantization, GGUF, Ollama);
pushing an unmerged LoRA checkpoint uploads the checkpoint itself.
"""
from __future__ import annotations

import json
import os
import shutil

from lmforge.args import from_kwargs
from lmforge.args.export import ExportArgs
from lmforge.errors import ArgumentError


def log(msg: str) -> None:
    print(f'[lmforge export] {msg}', flush=True)


def export(config: str | None = None, **kwargs) -> dict:
    """Python SDK: ``export(adapters=['out/checkpoint-100'], merge_lora=True)``; names of `lmforge export --help`."""
    return run_export(from_kwargs(ExportArgs, config, **kwargs))


def default_output_dir(args: ExportArgs, bundle) -> str:
    """Next to the checkpoint (or local model dir) it comes from; in the working directory for hub models."""
    if bundle.adapters:
        anchor = bundle.adapters[-1]
    elif args.model and os.path.isdir(os.path.expanduser(args.model)):
        anchor = os.path.abspath(os.path.expanduser(args.model))
    else:
        anchor = os.path.abspath(os.path.basename(bundle.base_dir.rstrip('/')) if not args.model else
                                 args.model.replace('/', '--'))
    anchor = anchor.rstrip('/')
    if args.quant_method:
        return f'{anchor}-{args.quant_method}-int{args.quant_bits}'
    if bundle.adapters:
        return f'{anchor}-merged'
    return f'{anchor}-gguf' if args.to_gguf else f'{anchor}-ollama'


def prepare_output_dir(path: str, exist_ok: bool, sources: list[str]) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    for src in sources:
        if os.path.abspath(src) == path:
            raise ArgumentError('output_dir', f'{path} is the model being exported; choose another directory')
    if os.path.exists(path) and not os.path.isdir(path):
        raise ArgumentError('output_dir', f'{path} is a file, not a directory; choose another --output_dir')
    if os.path.exists(path) and os.listdir(path) and not exist_ok:
        raise ArgumentError('output_dir', f'{path} exists and is not empty; pass --exist_ok true to write into it, '
                                          'or choose another --output_dir')
    return path


def run_export(args: ExportArgs) -> dict:
    from lmforge.models import load_tokenizer, resolve_checkpoint
    from lmforge.templates import apply_template

    bundle = resolve_checkpoint(args.model, args.adapters, use_hf=args.use_hf, revision=args.model_revision,
                                token=args.hub_token)
    if args.quant_method:  # before any merging: a missing library or GPU is known now
        from lmforge.export.quantize import check_environment
        check_environment(args.quant_method)
    needs_weights = bool(args.quant_method or args.to_gguf or args.to_ollama)
    if args.merge_lora and not bundle.adapters:
        raise ArgumentError('merge_lora', f'{args.model} is not a LoRA checkpoint and no --adapters are given: '
                                          'there is nothing to merge')
    merge = bool(bundle.adapters) and (args.merge_lora or needs_weights)
    if not (merge or needs_weights):  # only --push_to_hub: upload the model or checkpoint as it is
        from lmforge.export.hub import push_to_hub
        folder = bundle.adapters[-1] if bundle.adapters else bundle.base_dir
        url = push_to_hub(folder, args.hub_model_id, use_hf=args.use_hf, token=args.hub_token,
                          private=args.hub_private_repo, commit_message=args.commit_message)
        return {'output_dir': folder, 'hub_url': url}
    out_dir = prepare_output_dir(args.output_dir or default_output_dir(args, bundle), args.exist_ok,
                                 [bundle.base_dir, *bundle.adapters])
    result: dict = {'output_dir': out_dir}

    # 1. merge
    if merge:
        if not args.merge_lora:
            log('the adapters are merged first: quantization, GGUF and Ollama need plain weights')
        from lmforge.export.merge import merge_lora
        result['merge'] = merge_lora(bundle, out_dir, torch_dtype=args.torch_dtype, template=args.template,
                                     trust_remote_code=args.trust_remote_code, tolerance=args.merge_tolerance)
        model_dir = out_dir
    else:
        model_dir = bundle.base_dir if not bundle.adapters else bundle.adapters[-1]
    tokenizer = load_tokenizer(model_dir if merge else bundle.tokenizer_dir, args.trust_remote_code)
    apply_template(tokenizer, args.template)

    # 2a. quantize (into out_dir; from the merged copy, which then makes room for it)
    if args.quant_method:
        result['quant'] = _quantize(args, model_dir, out_dir, tokenizer, merged=merge)
        model_dir = out_dir

    # 2b. GGUF
    if args.to_gguf:
        from lmforge.export.to_gguf import gguf_file_name, write_gguf
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, gguf_file_name(out_dir if merge else model_dir, args.gguf_type))
        result['gguf'] = write_gguf(model_dir, path, args.gguf_type, tokenizer=tokenizer)
        result['gguf']['tensors'] = len(result['gguf']['tensors'])

    # 3. Ollama
    if args.to_ollama:
        from transformers import GenerationConfig

        from lmforge.export.ollama import write_modelfile
        os.makedirs(out_dir, exist_ok=True)
        try:
            gen = GenerationConfig.from_pretrained(model_dir if merge else bundle.tokenizer_dir)
        except OSError:
            gen = None
        source = result['gguf']['path'] if args.to_gguf else model_dir
        modelfile = write_modelfile(out_dir, source, tokenizer, gen)
        result['ollama'] = {'path': modelfile['path'], 'stop': modelfile['stop'],
                            'approximated': modelfile['approximated']}

    # 4. push
    if args.push_to_hub:
        from lmforge.export.hub import push_to_hub
        result['hub_url'] = push_to_hub(out_dir, args.hub_model_id, use_hf=args.use_hf, token=args.hub_token,
                                        private=args.hub_private_repo, commit_message=args.commit_message)
    _record(out_dir, result)
    log(f'done: {out_dir}')
    return result


def _quantize(args: ExportArgs, model_dir: str, out_dir: str, tokenizer, merged: bool) -> dict:
    from lmforge.export import quantize as q

    texts = q.calibration_texts(args.dataset, tokenizer, args.quant_n_samples) if args.dataset else None
    src = model_dir
    if merged:  # the merged model sits in out_dir: move it aside, quantize from there
        src = out_dir.rstrip('/') + '.merged-tmp'
        shutil.rmtree(src, ignore_errors=True)
        os.replace(out_dir, src)
    try:
        tmp = out_dir.rstrip('/') + '.tmp-quant'
        shutil.rmtree(tmp, ignore_errors=True)
        q.quantize(src, tmp, args.quant_method, args.quant_bits, texts, args.max_length, tokenizer)
        from lmforge.export.merge import PROBE_PROMPTS, replace_dir
        report_texts = texts[:32] if texts else [
            tokenizer.apply_chat_template([{'role': 'user', 'content': p}], tokenize=False, add_generation_prompt=True)
            if tokenizer.chat_template else p for p in PROBE_PROMPTS]
        report = q.drift_report(src, tmp, tokenizer, report_texts, min(args.max_length, 1024))
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(out_dir.rstrip('/') + '.tmp-quant', ignore_errors=True)
        if merged:
            shutil.rmtree(src, ignore_errors=True)
    return {'method': args.quant_method, 'bits': args.quant_bits, **report}


def _record(out_dir: str, result: dict) -> None:
    """Add what this export did to out_dir/lmforge_export.json (the merge step writes its part first)."""
    if not os.path.isdir(out_dir):
        return
    path = os.path.join(out_dir, 'lmforge_export.json')
    record = {}
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    record.update({k: v for k, v in result.items() if k != 'output_dir'})
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=2, ensure_ascii=False, default=str)
