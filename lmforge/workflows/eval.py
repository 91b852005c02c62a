"""`lmforge eval`: benchmarks (lm-evaluation-harness) and custom .jsonl sets, on a model or a running server.

check every dataset (custom files parse, harness tasks exist, offline data is cached) -> load the model once (or
connect to --eval_url) -> custom sets: generate through the chat template, score -> harness tasks -> results table
on the console, report.json and per-row predictions in --eval_output_dir/<time>/.
"""
from __future__ import annotations

import os
import time

from lmforge.args import from_kwargs
from lmforge.args.eval import EvalArgs


def log(msg: str) -> None:
    print(f'[lmforge eval] {msg}', flush=True)


def eval(config: str | None = None, **kwargs) -> dict:  # noqa: A001 - the command's name
    """Python SDK: ``eval(model=..., eval_dataset=['arc', 'my.jsonl'], eval_limit=100)``."""
    return run_eval(from_kwargs(EvalArgs, config, **kwargs))


def is_custom(spec: str) -> bool:
    return spec.endswith('.jsonl')


def _request_config(args: EvalArgs):
    from lmforge.infer.engine import RequestConfig

    return RequestConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                         top_k=args.top_k, repetition_penalty=args.repetition_penalty, stop=args.stop_words,
                         seed=args.seed)


def _set_name(path: str, taken: dict) -> str:
    name = os.path.splitext(os.path.basename(path))[0]
    base, i = name, 2
    while name in taken:
        name, i = f'{base}-{i}', i + 1
    return name


def run_eval(args: EvalArgs) -> dict:
    from lmforge.eval import custom, harness, report

    t0 = time.time()
    # 1. every dataset is checked before the model loads
    custom_sets = {}
    for spec in (s for s in args.eval_dataset if is_custom(s)):
        kind, items = custom.load_custom(spec, args.eval_limit)
        custom_sets[_set_name(spec, custom_sets)] = (spec, kind, items)
        log(f'{spec}: {len(items)} {"multiple-choice" if kind == "mc" else "open-QA"} rows')
    bench_specs = [s for s in args.eval_dataset if not is_custom(s)]
    tm = names = None
    if bench_specs:
        tm = harness.task_manager(bench_specs)
        names = harness.resolve_tasks(bench_specs, tm)
        harness.check_datasets_offline(tm, names, bench_specs)
        log(f'harness tasks: {", ".join(names)}')
    tokenizer_dir = None
    if bench_specs and args.eval_url:
        tokenizer_dir = _tokenizer_dir(args) if args.eval_url_api == 'completions' else None
        harness.check_api_requirements(args.eval_url_api, tokenizer_dir)

    # 2. the model, or the server
    cfg = _request_config(args)
    engine = client = None
    if args.eval_url:
        from lmforge.eval.client import ChatClient

        api_key = args.api_key or os.environ.get('OPENAI_API_KEY')
        client = ChatClient(args.eval_url, args.served_model_name, api_key)
        target = f'{args.eval_url} (model {client.model})'
    else:
        engine = _engine(args)
        target = ', '.join([engine.bundle.base_dir, *engine.bundle.adapters])
    log(f'evaluating {target}')

    def generate(conversations):
        if client is not None:
            from lmforge.templates import with_system
            return client.generate([with_system(c, args.system) for c in conversations], cfg)
        from lmforge.infer.engine import InferRequest
        return [r.text for r in engine.infer([InferRequest(c) for c in conversations], cfg,
                                             max_batch_size=args.max_batch_size)]

    results, n_samples, backends, predictions = {}, {}, {}, {}
    # 3. custom sets
    for name, (spec, kind, items) in custom_sets.items():
        responses = generate([i.messages for i in items])
        scores, rows = (custom.score_mc if kind == 'mc' else custom.score_qa)(items, responses)
        results[name], n_samples[name], predictions[name] = scores, len(items), rows
        backends[name] = 'lmforge ' + ('multiple choice' if kind == 'mc' else 'open QA')

    # 4. harness tasks
    raw = None
    if bench_specs:
        if client is not None:
            lm = harness.api_lm(args.eval_url, args.eval_url_api, client.model, tokenizer_dir, client.api_key,
                                max_length=_max_length(tokenizer_dir), max_gen_toks=args.max_new_tokens)
        else:
            lm = harness.hf_lm(engine.model, engine.tokenizer, args.max_batch_size)
        out = harness.run_harness(lm, tm, names, bench_specs, args.eval_limit, args.eval_num_fewshot,
                                  args.apply_chat_template or args.eval_url_api == 'chat' and client is not None,
                                  args.seed, args.system)
        raw = out['raw']
        for task, metrics in out['results'].items():
            results[task], n_samples[task], backends[task] = metrics, out['n_samples'].get(task, ''), 'lm_eval'

    # 5. report
    out_dir = os.path.join(args.eval_output_dir, time.strftime('%Y%m%d-%H%M%S'))
    while os.path.exists(out_dir):
        out_dir += '_'
    os.makedirs(out_dir)
    for name, rows in predictions.items():
        report.write_rows(os.path.join(out_dir, f'predictions_{name}.jsonl'), rows)
    from lmforge.args import to_dict
    summary = {'model': args.model, 'adapters': args.adapters, 'eval_url': args.eval_url,
               'served_model': client.model if client else None, 'results': results, 'n_samples': n_samples,
               'backends': backends, 'seconds': round(time.time() - t0, 1), 'args': to_dict(args),
               'lm_eval': raw}
    path = report.write_report(os.path.join(out_dir, 'report.json'), summary)
    print(report.table(results, n_samples, backends), flush=True)
    log(f'report: {path}')
    summary['report_path'] = path
    return summary


def _engine(args: EvalArgs):
    from peft import PeftModel

    from lmforge.infer.engine import PtEngine

    engine = PtEngine(args.model, adapters=args.adapters, torch_dtype=args.torch_dtype, attn_impl=args.attn_impl,
                      template=args.template, system=args.system, use_hf=args.use_hf, revision=args.model_revision,
                      token=args.hub_token, trust_remote_code=args.trust_remote_code)
    if isinstance(engine.model, PeftModel):  # the harness wants a plain transformers model: merge (exact, in memory)
        engine.model = engine.model.merge_and_unload()
        engine.model.eval()
    return engine


def _tokenizer_dir(args: EvalArgs) -> str | None:
    if not args.model:
        return None
    from lmforge.models import resolve_checkpoint

    return resolve_checkpoint(args.model, use_hf=args.use_hf, revision=args.model_revision,
                              token=args.hub_token).tokenizer_dir


def _max_length(tokenizer_dir: str | None) -> int:
    """The context the harness may fill: the model's max_position_embeddings when its config says, else 2048."""
    import json

    for d in filter(None, [tokenizer_dir]):
        path = os.path.join(d, 'config.json')
        if os.path.isfile(path):
            with open(path, encoding='utf-8') as f:
                config = json.load(f)
            if config.get('max_position_embeddings'):
                return int(config['max_position_embeddings'])
    return 2048
