"""`lmforge demo`: the embedded default, end to end on a CPU in a few minutes.

build a small Qwen2-architecture model + tokenizer locally -> ask it held-out questions (it cannot answer) ->
fine-tune it on the bundled data with `sft` -> ask again (it can) -> answer through the OpenAI-compatible server.
"""
from __future__ import annotations

import json
import os
import shutil

from lmforge.args import DemoArgs, from_kwargs


def log(msg: str) -> None:
    print(f'[lmforge demo] {msg}', flush=True)


def demo(config: str | None = None, **kwargs) -> dict:
    """Python SDK: ``demo(output_dir=..., max_steps=...)``."""
    return run_demo(from_kwargs(DemoArgs, config, **kwargs))


def build_base_model(path: str) -> str:
    """The demo's base model: Qwen2 architecture (hidden 128, 4 layers, ~0.8M parameters), random weights,
    and a byte-level BPE tokenizer trained on the demo data with the ChatML template."""
    from lmforge.demo.build import CHATML_SPECIAL, DEMO_CHAT_TEMPLATE, build_model, build_tokenizer, save_model_dir
    from lmforge.demo.tasks import data_path
    from lmforge.templates import render

    with open(data_path('train.jsonl'), encoding='utf-8') as f:
        rows = [json.loads(line) for line in f]
    kwargs = dict(special_tokens=CHATML_SPECIAL, chat_template=DEMO_CHAT_TEMPLATE, eos_token='<|im_end|>',
                  pad_token='<|endoftext|>', split_letters=True)
    probe = build_tokenizer([], vocab_size=300, **kwargs)  # renders the corpus with the same template
    tokenizer = build_tokenizer([render(probe, r['messages']) for r in rows], vocab_size=300, **kwargs)
    model = build_model(tokenizer, 'qwen2', hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                        intermediate_size=384)
    return save_model_dir(path, model, tokenizer)


def evaluate(model_dir: str, rows: list[dict]) -> tuple[float, list]:
    """Greedy answers to ``rows``' questions; accuracy = exact match with the reference answer."""
    from lmforge.infer.engine import InferRequest, PtEngine, RequestConfig

    engine = PtEngine(model_dir)
    answers = engine.infer([InferRequest(r['messages'][:-1]) for r in rows], RequestConfig(max_new_tokens=16),
                           max_batch_size=64)
    results = [(r['messages'][-2]['content'], r['messages'][-1]['content'], a.text.strip()) for r, a in
               zip(rows, answers)]
    return sum(ref == got for _, ref, got in results) / len(rows), results


def show(title: str, accuracy: float, results: list, n: int = 6) -> None:
    log(f'{title}: {accuracy:.0%} right on {len(results)} held-out questions')
    for question, ref, got in results[:n]:
        mark = 'ok ' if ref == got else 'bad'
        print(f'    [{mark}] {question!r:28} -> {got!r:10} (expected {ref!r})', flush=True)


def ask_server(ckpt: str, question: str) -> str:
    """Start the OpenAI-compatible server on the checkpoint and ask through the official `openai` client."""
    import openai

    from lmforge.infer.engine import PtEngine
    from lmforge.serve import create_app, start_server

    handle = start_server(create_app(PtEngine(ckpt), served_model_name='lmforge-demo'))
    try:
        client = openai.OpenAI(base_url=handle.url, api_key='none')
        reply = client.chat.completions.create(model='lmforge-demo', max_tokens=16, temperature=0,
                                               messages=[{'role': 'user', 'content': question}])
        log(f'server {handle.url}: POST /chat/completions {question!r} -> {reply.choices[0].message.content!r}')
        return reply.choices[0].message.content
    finally:
        handle.stop()


def run_demo(args: DemoArgs) -> dict:
    from lmforge.demo.tasks import data_path
    from lmforge.workflows.sft import sft

    if os.path.isdir(args.output_dir):
        if not args.overwrite_output_dir:
            from lmforge.errors import ArgumentError
            raise ArgumentError('output_dir', f'{args.output_dir} exists; pass --overwrite_output_dir true')
        shutil.rmtree(args.output_dir)
    base = build_base_model(os.path.join(args.output_dir, 'base-model'))
    log(f'built a small Qwen2 model from scratch (random weights): {base}')
    with open(data_path('test.jsonl'), encoding='utf-8') as f:
        test = [json.loads(line) for line in f][:args.num_eval]

    before, results = evaluate(base, test)
    show('before training', before, results)

    train_file = data_path('train.jsonl')
    log(f'fine-tuning on {train_file} ({args.max_steps} steps)')
    out = sft(model=base, dataset=[train_file], tuner_type='full', output_dir=os.path.join(args.output_dir, 'sft'),
              max_steps=args.max_steps, per_device_train_batch_size=16, learning_rate=1e-3, warmup_ratio=0.05,
              gradient_checkpointing=False, logging_steps=50, save_steps=args.max_steps, max_length=128,
              report_to=['none'])
    ckpt = out['last_checkpoint']

    after, results = evaluate(ckpt, test)
    show('after training', after, results)
    answer = ask_server(ckpt, test[0]['messages'][-2]['content']) if args.serve else None

    log(f'accuracy {before:.0%} -> {after:.0%}; loss curve: {os.path.join(args.output_dir, "sft", "loss.png")}')
    log(f'chat with it:   lmforge infer --model {ckpt}')
    log(f'serve it:       lmforge serve --model {ckpt}')
    log('a real model:   lmforge sft --model Qwen/Qwen2.5-0.5B-Instruct --use_hf --dataset data.jsonl '
        '--tuner_type lora')
    return {'accuracy_before': before, 'accuracy_after': after, 'checkpoint': ckpt, 'server_answer': answer,
            'train_loss': out['train_loss']}
