"""LoRA SFT (or DPO) speed on the CPU: lmforge next to ms-swift and LLaMA-Factory, same model, data and hyper-params.

Despite its name, this script also benchmarks LoRA DPO (`--task dpo`: dpo.jsonl, sigmoid loss, beta of
bench_hparams, reference = base model with the adapter disabled in all three frameworks).

    .venv/bin/python bench/sft_cpu.py [--task sft|dpo] [--model small-qwen2|tiny-qwen2] [--steps 50] [--repeats 2]
                                      [--frameworks lmforge,swift,lf] [--threads N] [--out DIR]
    .venv/bin/python bench/sft_cpu.py --report OUT_DIR [OUT_DIR ...]     # re-print the tables of earlier runs

A benchmark, not a test (nothing asserts; it takes minutes). One command:
  1. builds the assets with the peer benchmark's make_assets.py (models, tokenizer, data; no hub) if --assets
     holds none yet;
  2. runs lmforge (bench/lmforge_peer.py) and, where their venvs exist (PEERS_HOME, default /tmp/peers; build them
     with `bash ../shared/bench/peers/setup.sh /tmp/peers`), ms-swift and LLaMA-Factory, through the peers' own
     run.sh: every run under measure.py (wall time, peak RSS, CPU seconds), the frameworks alternated
     (swift, lf, lmforge / lmforge, lf, swift / ...), lmforge as run.sh's third framework (EXTRA_LABEL/EXTRA_CMD);
  3. prints the peers' tables (summarize.py) and a comparison against ms-swift: wall-time, train-time and
     trained-tokens/s ratios, and whether lmforge meets the target (wall time <= 0.8 x ms-swift's).
What each figure means: bench/README.md and ../shared/bench/peers/README.md.
"""
import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_PEERS = os.path.normpath(os.path.join(REPO, '..', 'shared', 'bench', 'peers'))
NAMES = {'lmforge': 'lmforge', 'swift': 'ms-swift', 'lf': 'LLaMA-Factory'}
TARGET = 0.8  # issue 3: lmforge wall time <= 0.8 x ms-swift's on the same work


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--task', default='sft', choices=['sft', 'dpo'],
                   help='sft (sft.jsonl, default) or dpo (dpo.jsonl, LoRA DPO, sigmoid loss): run.sh\'s TASKS')
    p.add_argument('--model', default='small-qwen2', choices=['small-qwen2', 'tiny-qwen2'],
                   help='small-qwen2 (~28M params, the measurement) or tiny-qwen2 (~0.6M, a smoke test)')
    p.add_argument('--steps', type=int, default=50, help='optimizer steps per run (batch 16)')
    p.add_argument('--repeats', type=int, default=2, help='runs of each framework, alternated')
    p.add_argument('--frameworks', default='lmforge,swift,lf',
                   help='comma-separated subset of lmforge, swift (ms-swift), lf (LLaMA-Factory); a peer whose venv '
                        'is missing is skipped with a note')
    p.add_argument('--threads', type=int, default=None,
                   help='OMP/MKL threads of every run (default: torch\'s own, one per core); 1 is steadier on a '
                        'machine shared with other CPU-heavy work')
    p.add_argument('--assets', default=os.environ.get('BENCH_ASSETS_DIR', '/tmp/peers-assets'),
                   help='assets folder (built with make_assets.py when it holds no manifest.json)')
    p.add_argument('--out', default=None, help='results folder (default /tmp/lmforge-bench/DATE-MODEL-STEPS)')
    p.add_argument('--peers-home', default=os.environ.get('PEERS_HOME', '/tmp/peers'),
                   help='where setup.sh built the peer venvs (PEERS_HOME)')
    p.add_argument('--peers-dir', default=os.environ.get('BENCH_PEERS_DIR', DEFAULT_PEERS),
                   help='the peer benchmark\'s scripts (../shared/bench/peers)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='override a shared hyper-parameter for every framework (bench_hparams.DEFAULTS)')
    p.add_argument('--timeout', type=int, default=1800, help='seconds one run may take (RUN_TIMEOUT)')
    p.add_argument('--report', nargs='+', metavar='OUT_DIR', help='only print the tables of earlier results')
    return p.parse_args(argv)


def ensure_assets(assets: str, peers_dir: str) -> None:
    if os.path.isfile(os.path.join(assets, 'manifest.json')):
        return
    print(f'[sft_cpu] building the assets in {assets} (make_assets.py, ~10 s)', flush=True)
    subprocess.run([sys.executable, os.path.join(peers_dir, 'make_assets.py'), '--out', assets], check=True)


def run_benchmark(opts) -> str:
    peers_dir = os.path.abspath(opts.peers_dir)
    if not os.path.isfile(os.path.join(peers_dir, 'run.sh')):
        raise SystemExit(f'no peer benchmark in {peers_dir} (--peers-dir)')
    wanted = [f.strip() for f in opts.frameworks.split(',') if f.strip()]
    unknown = [f for f in wanted if f not in NAMES]
    if unknown:
        raise SystemExit(f'--frameworks: unknown {", ".join(unknown)}; choose from {", ".join(NAMES)}')
    peers = []
    for fw in ('swift', 'lf'):
        if fw not in wanted:
            continue
        if os.access(os.path.join(opts.peers_home, fw, 'bin', 'python'), os.X_OK):
            peers.append(fw)
        else:
            print(f'[sft_cpu] {NAMES[fw]}: no venv {opts.peers_home}/{fw}: skipped (build it with '
                  f'`bash {peers_dir}/setup.sh {opts.peers_home}`)', flush=True)
    if not peers and 'lmforge' not in wanted:
        raise SystemExit('nothing to run')
    assets = os.path.abspath(opts.assets)
    ensure_assets(assets, peers_dir)
    out = opts.out or os.path.join('/tmp/lmforge-bench', datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
                                   + (f'-{opts.task}' if opts.task != 'sft' else '') + f'-{opts.model}-{opts.steps}')
    os.makedirs(out, exist_ok=True)
    set_args = ' '.join(f'--set {shlex.quote(s)}' for s in opts.set)
    env = dict(os.environ, PEERS_HOME=os.path.abspath(opts.peers_home), REPEATS=str(opts.repeats), TASKS=opts.task,
               MODEL=opts.model, FRAMEWORKS=' '.join(peers), RUN_TIMEOUT=str(opts.timeout), BENCH_ARGS=set_args)
    if opts.threads:
        env['THREADS'] = str(opts.threads)
    else:
        env.pop('THREADS', None)
    if 'lmforge' in wanted:
        env['EXTRA_LABEL'] = 'lmforge'
        env['EXTRA_CMD'] = (f'{shlex.quote(sys.executable)} {shlex.quote(os.path.join(HERE, "lmforge_peer.py"))} '
                            '--assets "$BENCH_ASSETS" --task "$BENCH_TASK" --steps "$BENCH_STEPS" '
                            f'--model "$BENCH_MODEL" {set_args}').strip()
    else:
        env.pop('EXTRA_CMD', None)
    print(f'[sft_cpu] {opts.task}, {opts.model}, {opts.steps} steps, {opts.repeats} repeat(s), frameworks: '
          f'{", ".join(NAMES[f] for f in peers + (["lmforge"] if "lmforge" in wanted else []))}; '
          f'results in {out}', flush=True)
    subprocess.run(['bash', os.path.join(peers_dir, 'run.sh'), assets, out, str(opts.steps)], env=env, check=False)
    return out


# ---------------------------------------------------------------------------------------------- the comparison
def load_runs(dirs, peers_dir):
    sys.path.insert(0, peers_dir)
    import summarize
    return [r for r in summarize.load(dirs) if r.get('train_runtime_s') and not r.get('error')], summarize


def _figures(summarize):
    proc = lambda r, k: (r.get('process') or {}).get(k)  # noqa: E731
    return [  # (header, getter, smaller is better, format)
        ('train s', lambda r: r.get('train_runtime_s'), True, '{:.1f}'),
        ('samples/s', lambda r: r.get('train_samples_per_s'), False, '{:.2f}'),
        ('trained tokens/s', summarize.tokens_per_s, False, '{:.0f}'),
        ('steady tokens/s', lambda r: r.get('steady_tokens_per_s'), False, '{:.0f}'),
        ('wall s', lambda r: proc(r, 'wall_s'), True, '{:.1f}'),
        ('wall - train s', lambda r: proc(r, 'wall_s') - r['train_runtime_s'] if proc(r, 'wall_s') else None,
         True, '{:.1f}'),
        ('peak RSS MB', lambda r: proc(r, 'peak_rss_mb'), True, '{:.0f}'),
        ('CPU s', summarize.cpu_s, True, '{:.0f}'),
    ]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def comparison(runs, summarize) -> str:
    figures = _figures(summarize)
    groups = {}
    for r in runs:
        groups.setdefault(r.get('framework', r['label']), []).append(r)
    order = sorted(groups, key=lambda f: {'lmforge': 0, 'ms-swift': 1, 'LLaMA-Factory': 2}.get(f, 3))
    base = groups.get('ms-swift')
    lines = ['Medians over the runs (best in brackets where there are several); ratios are medians / ms-swift\'s '
             'medians.', '',
             '| framework | version | runs | ' + ' | '.join(h for h, *_ in figures)
             + ' | wall vs ms-swift | train s vs ms-swift | tokens/s vs ms-swift | CPU s vs ms-swift |',
             '| --- | --- | ---: | ' + ' | '.join('---:' for _ in figures) + ' | ---: | ---: | ---: | ---: |']
    for fw in order:
        rs = groups[fw]
        cells = []
        for _, get, small, fmt in figures:
            vals = [v for v in (get(r) for r in rs) if v is not None]
            if not vals:
                cells.append('n/a')
                continue
            med = fmt.format(statistics.median(vals))
            best = fmt.format(min(vals) if small else max(vals))
            cells.append(med if len(vals) == 1 else f'{med} ({best})')
        ratios = []
        for idx in (4, 0, 2, 7):  # wall s, train s, trained tokens/s, CPU s (the least load-sensitive)
            get = figures[idx][1]
            mine, theirs = _median(get(r) for r in rs), _median(get(r) for r in base) if base else None
            ratios.append(f'{mine / theirs:.2f}x' if mine and theirs else 'n/a')
        lines.append(f'| {fw} | {rs[0].get("framework_version", "?")} | {len(rs)} | ' + ' | '.join(cells)
                     + ' | ' + ' | '.join(ratios) + ' |')
    lines.append('')
    lmf = groups.get('lmforge')
    if lmf and base:
        wall = figures[4][1]
        ratio = _median(wall(r) for r in lmf) / _median(wall(r) for r in base)
        verdict = 'met' if ratio <= TARGET else 'NOT met'
        cpu = figures[7][1]
        cpu_ratio = _median(cpu(r) for r in lmf) / _median(cpu(r) for r in base)
        tasks = '/'.join(sorted({str(r.get('task')) for r in runs}))
        lines.append(f'Target (issue 3, set for sft; task here: {tasks}) lmforge wall time <= {TARGET}x ms-swift\'s: '
                     f'{verdict} '
                     f'(median wall {ratio:.2f}x; CPU seconds {cpu_ratio:.2f}x, the figure least affected by other '
                     'work on the machine).')
    elif lmf:
        lines.append('No ms-swift run here: the ratios and the target need the peer venvs (setup.sh).')
    for r in lmf or []:
        info = r.get('lmforge') or {}
        if info:
            lines.append(f'{r["label"]}: imports {info.get("launcher_start_to_sft_call_s")} s, data + model + LoRA '
                         f'{info.get("sft_call_to_train_begin_s")} s, train {r["train_runtime_s"]:.1f} s (final '
                         f'checkpoint save {info.get("final_save_s")} s of it), after training (plots) '
                         f'{info.get("train_end_to_sft_return_s")} s; trained tokens {r.get("trained_tokens")} '
                         f'(lmforge\'s own count {info.get("tokens_seen")}), rows {r.get("trained_rows")}, '
                         f'padding-free {info.get("padding_free")}, LM head on trained positions '
                         f'{info.get("use_logits_to_keep")}, torch threads {info.get("torch_threads")}.')
    return '\n'.join(lines)


def report(dirs, peers_dir) -> None:
    runs, summarize = load_runs(dirs, peers_dir)
    if not runs:
        raise SystemExit(f'no results in {" ".join(dirs)}')
    for d in dirs:
        machine = os.path.join(d, 'machine.txt')
        if os.path.isfile(machine):
            print(open(machine).read().strip())
    print()
    subprocess.run([sys.executable, os.path.join(peers_dir, 'summarize.py'), *dirs], check=False)
    text = comparison(runs, summarize)
    print('\n' + text)
    if len(dirs) == 1:
        with open(os.path.join(dirs[0], 'comparison.md'), 'w') as f:
            f.write(text + '\n')


def main():
    opts = parse_args()
    peers_dir = os.path.abspath(opts.peers_dir)
    if opts.report:
        report(opts.report, peers_dir)
        return
    out = run_benchmark(opts)
    print('\n[sft_cpu] ------------------------------------------------------------ results', flush=True)
    report([out], peers_dir)
    print(f'\n[sft_cpu] results: {out} (one JSON + log per run, table.md, comparison.md, machine.txt)')


if __name__ == '__main__':
    main()
