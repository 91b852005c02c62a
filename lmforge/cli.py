"""`lmforge <command> [flags]`: one entry point that dispatches to a workflow.

Imports stay lazy: `lmforge --help` and `lmforge sft --help` touch only the standard library and the argument
dataclasses; torch and transformers load when a workflow runs.
"""
from __future__ import annotations

import difflib
import importlib
import sys

# command -> (arguments class, workflow function, one-line summary). Commands not built yet say so when run.
COMMANDS = {
    'sft': ('lmforge.args:SftArgs', 'lmforge.workflows.sft:run_sft', 'supervised fine-tuning on chat data'),
    'pt': ('lmforge.args:PtArgs', 'lmforge.workflows.sft:run_pt', '(continued) pre-training on plain text'),
    'infer': ('lmforge.args:InferArgs', 'lmforge.workflows.infer:run_infer',
              'chat in the terminal, or answer a dataset in batch'),
    'download': ('lmforge.args:DownloadArgs', 'lmforge.workflows.download:run_download',
                 'fill the local hub cache with a model'),
    'demo': ('lmforge.args:DemoArgs', 'lmforge.workflows.demo:run_demo',
             'build a small model, fine-tune it on bundled data, show it learned'),
    'template': (None, 'lmforge.templates.show:main', 'show a rendered conversation with the trained tokens marked'),
    'data': (None, 'lmforge.data.cli:main', 'list the named datasets; check a dataset against a model'),
    'serve': ('lmforge.args.serve:ServeArgs', 'lmforge.workflows.serve:run_serve',
              'OpenAI-compatible server (chat, completions, embeddings)'),
    'deploy': ('lmforge.args.serve:ServeArgs', 'lmforge.workflows.serve:run_serve', 'alias of serve'),
    'estimate': ('lmforge.args.estimate:EstimateArgs', 'lmforge.estimate:run_estimate',
                 'predict the peak GPU memory of a training run from the config alone'),
    'rlhf': ('lmforge.args.rlhf:RlhfArgs', 'lmforge.workflows.rlhf:run_rlhf',
             'preference alignment and RL: dpo, orpo, simpo, cpo, kto, rm, ppo, grpo, gkd'),
    'export': ('lmforge.args.export:ExportArgs', 'lmforge.workflows.export:run_export',
               'merge LoRA, quantize, GGUF + Ollama Modelfile, push to hub'),
    'eval': ('lmforge.args.eval:EvalArgs', 'lmforge.workflows.eval:run_eval',
             'benchmarks (lm-eval-harness) and custom .jsonl sets, on a model or a server'),
}
PLANNED = {
    'webui': 'Gradio web UI', 'app': 'chat web app',
}


def _load(spec: str):
    module, name = spec.split(':')
    return getattr(importlib.import_module(module), name)


def _usage() -> str:
    lines = ['usage: lmforge <command> [--flag value ...] [--config run.yaml]', '', 'commands:']
    for name, (_, _, summary) in COMMANDS.items():
        lines.append(f'  {name:<10} {summary}')
    for name, summary in PLANNED.items():
        if name not in COMMANDS:
            lines.append(f'  {name:<10} {summary} (not built yet)')
    lines += ['', '`lmforge <command> --help` lists every flag with its default.']
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    from lmforge.errors import LmforgeError

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(_usage())
        return 0
    if argv[0] in ('-V', '--version'):
        from lmforge import __version__
        print(f'lmforge {__version__}')
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        if command in PLANNED:
            print(f'lmforge: `{command}` ({PLANNED[command]}) is not built yet in this version.', file=sys.stderr)
            return 2
        hint = difflib.get_close_matches(command, list(COMMANDS) + list(PLANNED), n=1)
        extra = f' Did you mean `{hint[0]}`?' if hint else ''
        print(f'lmforge: unknown command {command!r}.{extra}\n\n{_usage()}', file=sys.stderr)
        return 2
    args_spec, func_spec, _ = COMMANDS[command]
    try:
        if args_spec is None:  # a command with its own small parser
            return _load(func_spec)(rest) or 0
        from lmforge.args import parse_args
        args = parse_args(_load(args_spec), rest, prog=f'lmforge {command}')
        from lmforge.train.distributed import relaunch
        code = relaunch(command, rest, args)  # NPROC_PER_NODE / NNODES: the same command under torchrun
        if code is not None:
            return code
        _load(func_spec)(args)
    except LmforgeError as e:
        print(f'lmforge {command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'\nlmforge {command}: interrupted', file=sys.stderr)
        return 130
    return 0


def entry():  # console script
    sys.exit(main())


if __name__ == '__main__':
    entry()
