"""`lmforge infer`: interactive chat in the terminal, or batch answers for a dataset."""
from __future__ import annotations

import json
import os
import sys
import time

from lmforge.args import InferArgs, from_kwargs


def infer(config: str | None = None, **kwargs) -> list[dict] | None:
    """Python SDK: ``infer(model=..., val_dataset=[...], result_path=...)``; names of `lmforge infer --help`."""
    return run_infer(from_kwargs(InferArgs, config, **kwargs))


def make_engine(args):
    """The --infer_backend engine (a missing or unusable one is refused before any model loads)."""
    from lmforge.infer.backends import make_engine as build

    extra = {} if args.infer_backend == 'pt' else {'engine_kwargs': args.engine_kwargs}
    return build(args.infer_backend, model=args.model, adapters=args.adapters, torch_dtype=args.torch_dtype,
                 attn_impl=args.attn_impl, template=args.template, system=args.system, use_hf=args.use_hf,
                 revision=args.model_revision, token=args.hub_token, trust_remote_code=args.trust_remote_code,
                 **extra)


def request_config(args):
    from lmforge.infer.engine import RequestConfig

    return RequestConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                         top_k=args.top_k, repetition_penalty=args.repetition_penalty, stop=args.stop_words,
                         seed=args.seed)


def run_infer(args: InferArgs):
    from lmforge.infer.backends import check_backend

    check_backend(args.infer_backend)  # not installed / no CUDA: said before the data is read or a model loads
    if args.val_dataset:
        return batch_infer(args)
    chat(args)
    return None


def batch_infer(args: InferArgs) -> list[dict]:
    """Answer the last user turn of every row; write one JSON line per row (written whole, then renamed)."""
    from lmforge.data import read_dataset
    from lmforge.data.formats import RowError, normalize
    from lmforge.errors import DataError
    from lmforge.infer.engine import InferRequest

    rows, requests, problems = [], [], []
    for spec in args.val_dataset:
        for row in read_dataset(spec, seed=args.seed, flag='val_dataset'):
            try:
                messages = normalize(row.data, 'infer')['messages']
            except RowError as e:
                problems.append(f'{row.where}: {e.field}: {e.problem}')
                continue
            reference = messages[-1]['content'] if messages[-1]['role'] == 'assistant' else None
            prompt = messages[:-1] if reference is not None else messages
            rows.append({'messages': prompt, 'labels': reference, 'source': row.where})
            requests.append(InferRequest(messages=prompt, tools=row.data.get('tools')))
    if problems:
        raise DataError(f'{len(problems)} rows of --val_dataset cannot be used, e.g. ' + '; '.join(problems[:3]))
    if not rows:
        raise DataError('--val_dataset: no rows')
    engine = make_engine(args)
    t0 = time.perf_counter()
    responses = engine.infer(requests, request_config(args), max_batch_size=args.max_batch_size)
    for r, resp in zip(rows, responses):
        r.update(response=resp.text, finish_reason=resp.finish_reason, prompt_tokens=resp.prompt_tokens,
                 completion_tokens=resp.completion_tokens)
    took = time.perf_counter() - t0
    path = args.result_path or os.path.join('infer_result', time.strftime('%Y%m%d-%H%M%S') + '.jsonl')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + '\n')
    os.replace(path + '.tmp', path)
    n_tokens = sum(r['completion_tokens'] for r in rows)
    print(f'[lmforge] answered {len(rows)} rows in {took:.1f}s ({n_tokens / max(took, 1e-9):.1f} generated '
          f'tokens/s) -> {path}', flush=True)
    return rows


def chat(args: InferArgs) -> None:
    """Multi-turn chat: `clear` forgets the conversation, `exit` (or Ctrl-D) ends it."""
    from lmforge.infer.engine import InferRequest

    engine = make_engine(args)
    config = request_config(args)
    print(f'[lmforge] {engine.bundle.base_dir}' + (f' + {", ".join(engine.bundle.adapters)}'
                                                   if engine.bundle.adapters else ''))
    print('[lmforge] chat: type a message; `clear` starts over, `exit` quits.')
    messages = []
    while True:
        try:
            query = input('<<< ')
        except EOFError:
            print()
            break
        if query.strip() in ('exit', 'quit'):
            break
        if query.strip() == 'clear':
            messages = []
            print('[lmforge] conversation cleared')
            continue
        if not query.strip():
            continue
        messages.append({'role': 'user', 'content': query})
        request = InferRequest(messages=list(messages))
        print('>>> ', end='', flush=True)
        if args.stream:
            pieces = []
            for piece in engine.stream(request, config):
                pieces.append(piece)
                print(piece, end='', flush=True)
            answer = ''.join(pieces)
            print()
        else:
            answer = engine.infer([request], config)[0].text
            print(answer)
        messages.append({'role': 'assistant', 'content': answer})
        sys.stdout.flush()
