"""pt-engine generation throughput against raw ``model.generate`` on the same batch (issue 7).

    .venv/bin/python bench/serve_throughput.py [--model small] [--concurrency 1,8,32] [--max_new_tokens 64]
                                               [--repeats 3] [--device cpu|cuda] [--dtype auto] [--http]

A benchmark, not a test (nothing asserts). For each concurrency C it builds one batch of C chat prompts of varied
lengths (a Qwen2-shaped random model and a BPE tokenizer built here, no hub) and times, greedy with a fixed
max_new_tokens, alternately:
  raw   ``model.generate`` on the left-padded batch (eos = the template's stop tokens), nothing else;
  pt    ``PtEngine.generate_rows`` on the same prompts: what the server runs for a batch (per-row sampling and
        stopping, incremental detokenization, stop-string checks, listeners);
  http  (--http) C clients streaming chat completions from the real server in this process, each sending requests
        back to back for the same number of tokens: what a client sees (batches form as requests queue; with
        --admit_after N > 0, the default, requests join a running batch after N steps: continuous batching).
Generated tokens/s counts every row's tokens up to its end-of-turn token or max_new_tokens (the same tokens for raw
and pt: greedy on the same padding; the script checks that they match). The best of --repeats runs is reported.
"pt / raw by CPU time" compares the CPU seconds this process spent instead (the least of each): on a machine shared
with other work it moves far less than wall time (on a GPU it means little: waiting for the GPU spins a CPU).
Issue 7's target: pt >= 0.8x raw at every concurrency.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

TARGET = 0.8
MODELS = {  # hidden, layers, heads, kv heads, intermediate, vocab
    'tiny': (64, 2, 4, 2, 128, 1000),
    'small': (512, 8, 8, 2, 1376, 8000),  # ~27M parameters: the CPU measurement
    'medium': (1024, 16, 16, 4, 2816, 32000),  # ~0.2B: for a GPU
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 3)[3],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='small', choices=sorted(MODELS))
    p.add_argument('--vocab_size', type=int, default=None, help="the model's and tokenizer's vocabulary (default: "
                                                                   "the preset's)")
    p.add_argument('--concurrency', default='1,8,32', help='comma-separated batch sizes / concurrent clients')
    p.add_argument('--max_new_tokens', type=int, default=64)
    p.add_argument('--repeats', type=int, default=3, help='timed runs of each (after one warm-up), best kept')
    p.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    p.add_argument('--dtype', default='auto', help='auto (float32 on cpu, bfloat16 on cuda) | float32 | bfloat16')
    p.add_argument('--threads', type=int, default=None, help='torch threads on cpu (default: torch\'s own)')
    p.add_argument('--http', action='store_true', help='also measure through the HTTP server (streaming clients)')
    p.add_argument('--admit_after', type=int, default=16,
                   help="the server's continuous batching (create_app's admit_after; 0: a batch runs to its end)")
    p.add_argument('--json', default=None, help='write the results here as JSON too')
    return p.parse_args(argv)


def build(args, path: str) -> str:
    """A Qwen2-shaped random model and a ChatML byte-level BPE tokenizer with the model's vocabulary (trained here on
    chat words and random letter strings, so that every id decodes to text, as in a real model), saved to ``path``."""
    import random

    from lmforge.demo.build import CHATML_SPECIAL, DEMO_CHAT_TEMPLATE, build_model, build_tokenizer, save_model_dir

    hidden, layers, heads, kv, inter, vocab = MODELS[args.model]
    vocab = args.vocab_size or vocab
    rng = random.Random(0)
    words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 9)))
             for _ in range(max(20000, 3 * vocab))]
    corpus = [' '.join(words[i:i + 20]) for i in range(0, len(words), 20)]
    corpus += ['<|im_start|>user\nLast letter: abcdefgh word<|im_end|>\n<|im_start|>assistant\n'] * 100
    tokenizer = build_tokenizer(corpus, CHATML_SPECIAL, vocab_size=vocab, chat_template=DEMO_CHAT_TEMPLATE,
                                eos_token='<|im_end|>', pad_token='<|endoftext|>')
    model = build_model(tokenizer, 'qwen2', hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv,
                        intermediate_size=inter)
    return save_model_dir(path, model, tokenizer)


def prompts_for(engine, n: int) -> list[list[int]]:
    from lmforge.infer.engine import InferRequest

    questions = ['Last letter: abcdefgh'[:14 + i % 8] + ' ' + 'word ' * (i % 13) for i in range(n)]
    return [engine.prompt_ids(InferRequest([{'role': 'user', 'content': q}])) for q in questions]


def sync(device):
    import torch

    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_raw(engine, prompts, max_new: int) -> tuple[tuple[float, float], list[list[int]]]:
    """((wall s, CPU s of this process), each row's generated ids)."""
    import torch
    from transformers import GenerationConfig

    pad = engine.tokenizer.pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=engine.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=engine.device)
    gen = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, eos_token_id=engine.stop_ids,
                           pad_token_id=pad)
    sync(engine.device)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = engine.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    sync(engine.device)
    elapsed = (time.perf_counter() - start, time.process_time() - cpu)
    rows = []
    for row in out[:, width:].tolist():  # up to and with the first stop token (the rest is padding)
        ends = [i for i, t in enumerate(row) if t in engine.stop_ids]
        rows.append(row[:ends[0] + 1] if ends else row)
    return elapsed, rows


def run_pt(engine, prompts, max_new: int) -> tuple[tuple[float, float], list[list[int]]]:
    from lmforge.infer.engine import RequestConfig

    texts = []
    rows = [engine.new_sequence(p, RequestConfig(max_new_tokens=max_new),
                                listener=lambda seq, text, lps: texts.append(text)) for p in prompts]
    sync(engine.device)
    start, cpu = time.perf_counter(), time.process_time()
    engine.generate_rows(rows)
    sync(engine.device)
    return (time.perf_counter() - start, time.process_time() - cpu), [r.token_ids for r in rows]


def run_http(url: str, concurrency: int, max_new: int, requests_each: int) -> tuple[float, int]:
    """``concurrency`` streaming clients, each sending ``requests_each`` chat requests back to back."""
    import asyncio

    import httpx

    async def client(i, http):
        tokens = 0
        for k in range(requests_each):
            body = {'model': 'bench', 'max_tokens': max_new, 'temperature': 0, 'stream': True,
                    'stream_options': {'include_usage': True},
                    'messages': [{'role': 'user', 'content': 'Last letter: abcdefgh'[:14 + (i + k) % 8]}]}
            async with http.stream('POST', url + '/chat/completions', json=body) as r:
                lines = [line async for line in r.aiter_lines() if line]
            assert lines[-1] == 'data: [DONE]', lines[-3:]
            tokens += json.loads(lines[-2][6:])['usage']['completion_tokens']
        return tokens

    async def main():
        limits = httpx.Limits(max_connections=concurrency + 4)
        async with httpx.AsyncClient(timeout=600, limits=limits) as http:
            start = time.perf_counter()
            counts = await asyncio.gather(*(client(i, http) for i in range(concurrency)))
            return time.perf_counter() - start, sum(counts)

    return asyncio.run(main())


def measure(args, engine, url) -> list[dict]:
    results = []
    for c in [int(x) for x in args.concurrency.split(',')]:
        prompts = prompts_for(engine, c)
        run_raw(engine, prompts, args.max_new_tokens)  # warm-up (allocator, kernels)
        run_pt(engine, prompts, args.max_new_tokens)
        raw_times, pt_times = [], []
        for _ in range(args.repeats):  # alternated, so that load on a shared machine hits both alike
            t_raw, raw_rows = run_raw(engine, prompts, args.max_new_tokens)
            t_pt, pt_rows = run_pt(engine, prompts, args.max_new_tokens)
            raw_times.append(t_raw)
            pt_times.append(t_pt)
        tokens = sum(map(len, raw_rows))
        same = sum(a == b for a, b in zip(raw_rows, pt_rows))
        raw_s, pt_s = min(t[0] for t in raw_times), min(t[0] for t in pt_times)
        entry = {'concurrency': c, 'tokens': tokens, 'raw_s': raw_s, 'pt_s': pt_s, 'raw_tok_s': tokens / raw_s,
                 'pt_tok_s': sum(map(len, pt_rows)) / pt_s, 'rows_identical': f'{same}/{c}',
                 'raw_cpu_s': min(t[1] for t in raw_times), 'pt_cpu_s': min(t[1] for t in pt_times)}
        entry['ratio'] = entry['pt_tok_s'] / entry['raw_tok_s']
        entry['cpu_ratio'] = entry['raw_cpu_s'] / entry['pt_cpu_s']  # the same tokens: raw's CPU time / pt's
        if url:
            run_http(url, c, args.max_new_tokens, 1)  # warm-up
            best = None
            for _ in range(args.repeats):
                t, n = run_http(url, c, args.max_new_tokens, 2)
                best = max(best or 0, n / t)
            entry['http_tok_s'] = best
            entry['http_ratio'] = best / entry['raw_tok_s']
        results.append(entry)
        print(row_text(entry, bool(url)), flush=True)
    return results


def header(http: bool) -> str:
    cols = ['concurrency', 'tokens', 'raw tok/s', 'pt tok/s', 'pt / raw', 'pt / raw by CPU time', 'same tokens']
    cols += ['http tok/s', 'http / raw'] if http else []
    return '| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols)


def row_text(e: dict, http: bool) -> str:
    cells = [e['concurrency'], e['tokens'], f"{e['raw_tok_s']:.0f}", f"{e['pt_tok_s']:.0f}", f"{e['ratio']:.2f}",
             f"{e['cpu_ratio']:.2f}", e['rows_identical']]
    if http:
        cells += [f"{e['http_tok_s']:.0f}", f"{e['http_ratio']:.2f}"]
    return '| ' + ' | '.join(map(str, cells)) + ' |'


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lmforge.infer.engine import PtEngine

    with tempfile.TemporaryDirectory(prefix='lmforge-bench-serve-') as tmp:
        path = build(args, tmp)
        engine = PtEngine(path, device=args.device, torch_dtype=args.dtype)
        params = sum(p.numel() for p in engine.model.parameters())
        dev = torch.cuda.get_device_name(engine.device) if engine.device.type == 'cuda' else platform.processor()
        print(f'model: {args.model} qwen2 ({params / 1e6:.1f}M parameters, vocab {engine.model.config.vocab_size}), '
              f'{engine.model.dtype}, device {engine.device} ({dev or platform.machine()}), '
              f'torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, max_new_tokens '
              f'{args.max_new_tokens}, best of {args.repeats}'
              + (f', server admit_after {args.admit_after}' if args.http else ''), flush=True)
        print(header(args.http), flush=True)
        handle = None
        if args.http:
            from lmforge.serve import create_app, start_server

            top = max(int(x) for x in args.concurrency.split(','))
            handle = start_server(create_app(engine, served_model_name='bench', max_concurrency=top,
                                             max_batch_size=top, admit_after=args.admit_after))
        try:
            results = measure(args, engine, handle.url if handle else None)
        finally:
            if handle:
                handle.stop()
    worst = min(e['ratio'] for e in results)
    print(f'pt / raw: worst {worst:.2f} (target >= {TARGET}): {"met" if worst >= TARGET else "NOT met"}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'args': vars(args), 'params': params, 'results': results}, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
