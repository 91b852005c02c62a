"""Preprocessing speed: chat rows (jsonl) -> input_ids + labels, in lmforge, ms-swift and LLaMA-Factory.

    .venv/bin/python bench/data_preprocess.py [--rows 100000] [--repeats 2] [--num_proc 1] [--out /tmp/data-bench]
                                             [--assets /tmp/peers-assets] [--peers /tmp/peers]
                                             [--frameworks lmforge,swift,lf] [--json results.json]

The data: ``--rows`` synthetic conversations written to OUT/chat-N.jsonl (seeded): a system turn (so that no
framework adds its own default system prompt: all three render the same text and must count the same tokens), then
1-3 user/assistant turns of the peer benchmark's tasks (multi-digit addition, some with the column-by-column working,
and string reversal). The tokenizer and chat template: the peer benchmark's tiny-qwen2 (ASSETS/tiny-qwen2, Qwen2's
ChatML template, byte-level BPE) when ``--assets`` holds it (`../shared/bench/peers/make_assets.py`), else lmforge's
demo ChatML tokenizer (then only lmforge runs).

What is timed, in a fresh process per run, from the jsonl file to token ids and labels in memory, ``--num_proc``
processes each, every cache off (each framework's own `datasets` cache or lmforge's data cache is written to a fresh
temporary folder and never read):
  lmforge        `lmforge.data.dataset.encode_specs` (the training path: read, detect the format, validate every
                 row, encode through the model's chat template, write lmforge's data cache). Its one process uses
                 more than one core: the Rust tokenizer encodes a chunk of rows in its own threads while Python
                 validates and renders the next chunk, so compare rows/CPU-s too
  ms-swift       `swift.dataset.load_dataset` (row preprocessing to messages) + `EncodePreprocessor(template)`
                 (template.encode of every row), template qwen2_5: what `swift sft` runs before training
  LLaMA-Factory  `llamafactory.data.get_dataset(..., stage='sft')` (load, align the sharegpt columns, supervised
                 preprocessing), template qwen: what `llamafactory-cli train` runs before training
The ms-swift and LLaMA-Factory runs use their venvs under ``--peers`` (`../shared/bench/peers/setup.sh`) and are
skipped when those are missing. Figures: rows/s over wall time, and over CPU seconds (the process and its children:
steadier on a machine shared with other work); with ``--repeats`` > 1 the best run of each framework counts, and the
frameworks take turns so that load on the machine spreads over all of them. The ratios are lmforge's rate over each
peer's.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SYSTEM = 'You are a careful assistant. Solve the task exactly and answer briefly.'
WORDS = ('apple river stone cloud amber falcon meadow silver orbit lantern harbor pepper violet canyon ember '
         'willow marble cobalt thunder saffron glacier quartz maple cedar').split()


# --------------------------------------------------------------------------- data

def _number(rng: random.Random) -> int:
    n = rng.randint(2, 12)
    return rng.randint(10 ** (n - 1), 10 ** n - 1)


def _worked_sum(a: int, b: int) -> str:
    x, y, carry, lines = str(a)[::-1], str(b)[::-1], 0, []
    for i in range(max(len(x), len(y))):
        da, db = int(x[i]) if i < len(x) else 0, int(y[i]) if i < len(y) else 0
        s = da + db + carry
        lines.append(f'{da}+{db}+{carry}={s}: digit {s % 10}, carry {s // 10}')
        carry = s // 10
    return '\n'.join(lines) + f'\nSo {a} + {b} = {a + b}.'


def _task(rng: random.Random) -> tuple[str, str]:
    kind = rng.random()
    if kind < 0.45:
        a, b = _number(rng), _number(rng)
        q = rng.choice(['What is {a} + {b}?', 'Compute {a} plus {b}.', 'Add {a} and {b}.']).format(a=a, b=b)
        return q, f'{a + b}'
    if kind < 0.7:
        a, b = _number(rng), _number(rng)
        return f'Add {a} and {b} column by column, showing the carries.', _worked_sum(a, b)
    s = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    return rng.choice(['Reverse the string: {s}', 'Write "{s}" backwards.']).format(s=s), s[::-1]


def write_rows(path: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        for _ in range(n):
            messages = [{'role': 'system', 'content': SYSTEM}]
            for _ in range(rng.choice((1, 1, 2, 3))):
                q, a = _task(rng)
                messages += [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]
            f.write(json.dumps({'messages': messages}) + '\n')
    os.replace(path + '.tmp', path)


# --------------------------------------------------------------------------- workers (one fresh process per run)

def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


LMFORGE_WORKER = r'''
import json, os, sys, time
sys.path.insert(0, REPO)
from lmforge.models import load_tokenizer
from lmforge.templates import apply_template
from lmforge.data.dataset import encode_specs
tok = load_tokenizer(MODEL, False)
apply_template(tok)
t, c = time.perf_counter(), CPU()
samples, report = encode_specs([DATA], tok, 'sft', max_length=MAXLEN, truncation_strategy='delete', num_proc=NPROC,
                               load_from_cache_file=False, log=lambda m: None)
wall, cpu = time.perf_counter() - t, CPU() - c
t2 = time.perf_counter()
again, _ = encode_specs([DATA], tok, 'sft', max_length=MAXLEN, truncation_strategy='delete', num_proc=NPROC,
                        load_from_cache_file=True, log=lambda m: None)
cached_wall = time.perf_counter() - t2
assert len(again) == len(samples) and again[len(again) // 2] == samples[len(samples) // 2]
import importlib.metadata
RESULT(framework='lmforge', version=importlib.metadata.version('lmforge'), rows=report.rows, samples=len(samples),
       tokens=samples.num_tokens, wall=wall, cpu=cpu, cached_wall=cached_wall,
       invalid=len(report.invalid))
'''

SWIFT_WORKER = r'''
import json, os, sys, time, importlib.metadata
from swift.dataset import load_dataset, EncodePreprocessor
from swift.template import get_template
from swift.model import get_processor
proc = get_processor(MODEL, model_type='qwen2', use_hf=True, download_model=False)
tpl = get_template(proc, template_type='qwen2_5', max_length=MAXLEN, truncation_strategy='delete')
tpl.set_mode('train')
t, c = time.perf_counter(), CPU()
ds, _ = load_dataset([DATA], num_proc=NPROC, load_from_cache_file=False)
enc = EncodePreprocessor(template=tpl)(ds, num_proc=NPROC, load_from_cache_file=False)
wall, cpu = time.perf_counter() - t, CPU() - c
RESULT(framework='ms-swift', version=importlib.metadata.version('ms-swift'), rows=len(ds), samples=len(enc),
       tokens=sum(len(x) for x in enc['input_ids']), wall=wall, cpu=cpu)
'''

LF_WORKER = r'''
import json, os, sys, time, importlib.metadata
from llamafactory.hparams import get_train_args
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.model import load_tokenizer
folder = os.path.dirname(DATA)
with open(os.path.join(folder, 'dataset_info.json'), 'w') as f:
    json.dump({'bench_chat': {'file_name': os.path.basename(DATA), 'formatting': 'sharegpt',
                              'columns': {'messages': 'messages'},
                              'tags': {'role_tag': 'role', 'content_tag': 'content', 'user_tag': 'user',
                                       'assistant_tag': 'assistant', 'system_tag': 'system'}}}, f)
args = {'stage': 'sft', 'do_train': True, 'model_name_or_path': MODEL, 'finetuning_type': 'lora',
        'dataset': 'bench_chat', 'dataset_dir': folder, 'template': 'qwen', 'cutoff_len': MAXLEN,
        'overwrite_cache': True, 'output_dir': WORK, 'report_to': 'none',
        'preprocessing_num_workers': NPROC if NPROC > 1 else None}
model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module['tokenizer'], data_args)
t, c = time.perf_counter(), CPU()
module = get_dataset(template, model_args, data_args, training_args, stage='sft', **tokenizer_module)
wall, cpu = time.perf_counter() - t, CPU() - c
ds = module['train_dataset']
RESULT(framework='LLaMA-Factory', version=importlib.metadata.version('llamafactory'), rows=len(ds),
       samples=len(ds), tokens=sum(len(x) for x in ds['input_ids']), wall=wall, cpu=cpu)
'''

PRELUDE = r'''
import json, os, resource, sys, time
REPO, MODEL, DATA, MAXLEN, NPROC, WORK = {repo!r}, {model!r}, {data!r}, {maxlen!r}, {nproc!r}, {work!r}
def CPU():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
def RESULT(**kw):
    print('BENCH_RESULT ' + json.dumps(kw), flush=True)
'''


def run_worker(python: str, code: str, env_extra: dict, timeout: int) -> dict:
    work = tempfile.mkdtemp(prefix='data-bench-')
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'TRANSFORMERS_VERBOSITY': 'error',
           'HF_DATASETS_CACHE': os.path.join(work, 'hf-datasets'), 'LMFORGE_DATA_CACHE': os.path.join(work, 'lmf'),
           'MODELSCOPE_CACHE': os.path.join(work, 'ms'), 'DISABLE_VERSION_CHECK': '1', **env_extra}
    script = os.path.join(work, 'worker.py')
    with open(script, 'w') as f:
        f.write(code)
    proc = subprocess.run([python, script], capture_output=True, text=True, env=env, timeout=timeout, cwd=work)
    for line in proc.stdout.splitlines():
        if line.startswith('BENCH_RESULT '):
            return json.loads(line[len('BENCH_RESULT '):])
    raise RuntimeError(f'{python} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rows', type=int, default=100_000)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--num_proc', type=int, default=1)
    p.add_argument('--max_length', type=int, default=2048)
    p.add_argument('--out', default=os.path.join(tempfile.gettempdir(), 'data-bench'))
    p.add_argument('--assets', default='/tmp/peers-assets')
    p.add_argument('--peers', default=os.environ.get('PEERS_HOME', '/tmp/peers'))
    p.add_argument('--frameworks', default='lmforge,swift,lf')
    p.add_argument('--timeout', type=int, default=3600)
    p.add_argument('--json', help='also write the results here')
    opts = p.parse_args(argv)

    os.makedirs(opts.out, exist_ok=True)
    data = os.path.join(opts.out, f'chat-{opts.rows}.jsonl')
    if not os.path.isfile(data):
        write_rows(data, opts.rows)
    model = os.path.join(opts.assets, 'tiny-qwen2')
    wanted = opts.frameworks.split(',')
    if not os.path.isfile(os.path.join(model, 'tokenizer_config.json')):
        model = os.path.join(opts.out, 'demo-model')
        if not os.path.isdir(model):
            sys.path.insert(0, REPO)
            from lmforge.demo.build import build_model, build_tokenizer, save_model_dir, CHATML_SPECIAL, \
                DEMO_CHAT_TEMPLATE
            with open(data) as f:
                corpus = [json.loads(next(f))['messages'][-1]['content'] for _ in range(2000)]
            tok = build_tokenizer(corpus, CHATML_SPECIAL, vocab_size=2000, chat_template=DEMO_CHAT_TEMPLATE,
                                  eos_token='<|im_end|>', pad_token='<|endoftext|>')
            save_model_dir(model, build_model(tok, 'qwen2', hidden_size=32, num_layers=1, num_heads=2,
                                              num_kv_heads=1, intermediate_size=64), tok)
        wanted = ['lmforge']
        print(f'no peer assets at {opts.assets}: lmforge only, with a demo ChatML tokenizer', flush=True)
    pythons = {'lmforge': (sys.executable, LMFORGE_WORKER),
               'swift': (os.path.join(opts.peers, 'swift', 'bin', 'python'), SWIFT_WORKER),
               'lf': (os.path.join(opts.peers, 'lf', 'bin', 'python'), LF_WORKER)}
    runs = {}
    for rep in range(opts.repeats):
        for name in wanted:
            python, body = pythons[name]
            if not os.path.isfile(python):
                print(f'{name}: no venv at {python}, skipped', flush=True)
                continue
            code = PRELUDE.format(repo=REPO, model=model, data=data, maxlen=opts.max_length, nproc=opts.num_proc,
                                  work=os.path.join(opts.out, f'work-{name}')) + body
            r = run_worker(python, code, {}, opts.timeout)
            runs.setdefault(name, []).append(r)
            print(f'[{rep + 1}/{opts.repeats}] {r["framework"]} {r["version"]}: {r["rows"]} rows -> {r["samples"]} '
                  f'samples, {r["tokens"]} tokens in {r["wall"]:.1f} s wall ({r["rows"] / r["wall"]:.0f} rows/s), '
                  f'{r["cpu"]:.1f} CPU s ({r["rows"] / r["cpu"]:.0f} rows/CPU-s)'
                  + (f'; from the cache: {r["cached_wall"]:.2f} s' if 'cached_wall' in r else ''), flush=True)
    best = {name: min(rs, key=lambda r: r['wall']) for name, rs in runs.items()}
    best_cpu = {name: min(rs, key=lambda r: r['cpu']) for name, rs in runs.items()}
    load = os.getloadavg()
    lines = [f'rows: {opts.rows}, num_proc: {opts.num_proc}, max_length: {opts.max_length}, tokenizer: {model}, '
             f'repeats: {opts.repeats}, load average after: {load[0]:.1f}', '',
             '| framework | version | rows/s (wall, best) | rows/CPU-s (best) | tokens | wall s (runs) | '
             'lmforge speed-up (wall / CPU) |', '|---|---|---|---|---|---|---|']
    for name, r in best.items():
        rate, crate = r['rows'] / r['wall'], best_cpu[name]['rows'] / best_cpu[name]['cpu']
        ratio = ''
        if name != 'lmforge' and 'lmforge' in best:
            lw = best['lmforge']['rows'] / best['lmforge']['wall']
            lc = best_cpu['lmforge']['rows'] / best_cpu['lmforge']['cpu']
            ratio = f'{lw / rate:.2f}x / {lc / crate:.2f}x'
        walls = ', '.join(f'{x["wall"]:.1f}' for x in runs[name])
        lines.append(f'| {r["framework"]} | {r["version"]} | {rate:.0f} | {crate:.0f} | {r["tokens"]} | {walls} | '
                     f'{ratio} |')
    print('\n'.join(lines))
    if opts.json:
        with open(opts.json, 'w') as f:
            json.dump({'runs': runs, 'table': lines}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
