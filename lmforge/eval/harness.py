"""Benchmarks through lm-evaluation-harness (`lm_eval`): against the loaded model, or a running OpenAI-compatible
server (`local-completions` for log-likelihood and generation tasks, `local-chat-completions` for generation only).

Task names are the harness's (a few ms-swift/EvalScope names are mapped: arc -> ai2_arc, ceval -> ceval-valid, ...);
a YAML task file or a directory of them runs local data. Offline, every Hugging Face dataset a task needs is checked
in the local cache before anything is loaded, and a missing one is an error that says what to download.
"""
from __future__ import annotations

import functools
import os

from lmforge.errors import DataError, LmforgeError

# ms-swift / EvalScope benchmark names -> the harness's
ALIASES = {'arc': 'ai2_arc', 'ceval': 'ceval-valid', 'truthful_qa': 'truthfulqa_mc2', 'trivia_qa': 'triviaqa',
           'competition_math': 'hendrycks_math', 'math': 'hendrycks_math', 'human_eval': 'humaneval',
           'mmlu-pro': 'mmlu_pro', 'ifeval': 'ifeval'}
LOCAL_BUILDERS = ('json', 'csv', 'parquet', 'text', 'arrow', 'pandas', 'webdataset', 'imagefolder', 'audiofolder')


class EvalError(LmforgeError):
    """An evaluation cannot run: unknown task, missing data, unreachable server."""


def log(msg: str) -> None:
    print(f'[lmforge eval] {msg}', flush=True)


def _offline() -> bool:
    return any(os.environ.get(v, '0').strip().lower() in ('1', 'true', 'yes', 'on')
               for v in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE'))


def is_task_path(spec: str) -> bool:
    return spec.endswith(('.yaml', '.yml')) or os.path.isdir(os.path.expanduser(spec))


def task_manager(specs: list[str]):
    """A TaskManager that knows the built-in tasks (only when a name needs them: indexing them takes seconds) and the
    YAML directories given."""
    dirs = [os.path.abspath(os.path.expanduser(s)) for s in specs if os.path.isdir(os.path.expanduser(s))]
    files = [os.path.dirname(os.path.abspath(os.path.expanduser(s))) for s in specs
             if s.endswith(('.yaml', '.yml')) and os.path.isfile(os.path.expanduser(s))]
    needs_defaults = any(not is_task_path(s) for s in specs)
    paths = list(dict.fromkeys(dirs + files))
    if not paths:
        return _builtin_task_manager()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=paths, include_defaults=needs_defaults)  # fresh: the YAML files may have changed


@functools.lru_cache(maxsize=1)
def _builtin_task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


def resolve_tasks(specs: list[str], tm) -> list[str]:
    """--eval_dataset values -> task/group names the harness knows (or YAML paths it loads directly)."""
    import difflib

    from lm_eval.tasks._index import TaskIndex
    from pathlib import Path

    out = []
    for spec in specs:
        path = os.path.expanduser(spec)
        if spec.endswith(('.yaml', '.yml')):
            if not os.path.isfile(path):
                raise DataError(f'--eval_dataset {spec}: no such file')
            try:
                entry = TaskIndex.entry_from_path(Path(path))
            except Exception as e:  # noqa: BLE001 - YAML syntax errors and lm-eval's own loader errors alike
                raise DataError(f'--eval_dataset {spec}: not a readable lm-eval task file ({type(e).__name__}: '
                                f'{" ".join(str(e).split())})') from None
            if entry is None:
                raise DataError(f'--eval_dataset {spec}: not an lm-eval task file (no `task:` or `group:` key)')
            out.append(entry.name)
            continue
        if os.path.isdir(path):
            root = os.path.abspath(path)
            entries = [e for e in tm.task_index.values() if e.yaml_path and str(e.yaml_path).startswith(root)]
            groups = [e.name for e in entries if e.kind.name == 'GROUP']
            names = groups or [e.name for e in entries if e.kind.name in ('TASK', 'PY_TASK')]
            if not names:
                raise DataError(f'--eval_dataset {spec}: the directory holds no lm-eval task YAML files')
            out.extend(sorted(names))
            continue
        name = ALIASES.get(spec, spec)
        if name not in tm.task_index:
            matches = tm.match_tasks([name]) if any(c in name for c in '*?[') else []
            if matches:
                out.extend(matches)
                continue
            hint = difflib.get_close_matches(name, tm.all_tasks, n=3)
            raise DataError(f'--eval_dataset {spec}: not a task, group or tag of lm-eval-harness'
                            + (f'; did you mean {", ".join(hint)}?' if hint else '') +
                            ' (`lm-eval ls tasks` lists them; a .yaml file or a directory runs your own task; a '
                            '.jsonl file runs a custom multiple-choice / QA set)')
        out.append(name)
    return list(dict.fromkeys(out))


def hub_datasets(tm, names: list[str]) -> dict[str, set]:
    """{Hugging Face dataset id: {config names}} that the tasks ``names`` read (groups and tags expanded)."""
    index = tm.task_index
    found: dict[str, set] = {}
    seen = set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        entry = index.get(name)
        if entry is None:
            return
        cfg = entry.cfg or {}
        kind = entry.kind.name
        if kind == 'TAG':
            for other in index.values():
                if name in (other.tags or set()):
                    visit(other.name)
            return
        if kind == 'GROUP':
            for child in cfg.get('task') or []:
                if isinstance(child, str):
                    visit(child)
                elif isinstance(child, dict) and 'dataset_path' in child:
                    add(child)
                elif isinstance(child, dict):
                    visit(child.get('task') or child.get('group'))
            return
        add(cfg)

    def add(cfg):
        path = cfg.get('dataset_path')
        if not path or path in LOCAL_BUILDERS or os.path.exists(os.path.expanduser(str(path))):
            return
        found.setdefault(path, set()).add(cfg.get('dataset_name'))

    for n in names:
        visit(n)
    return found


def check_datasets_offline(tm, names: list[str], specs: list[str]) -> None:
    """Offline: every hub dataset the tasks need must be in the local cache; else say which and how to get them."""
    if not _offline():
        return
    import datasets

    missing = []
    for path, configs in sorted(hub_datasets(tm, names).items()):
        config = sorted(c for c in configs if c)[:1] or [None]
        try:
            datasets.load_dataset_builder(path, config[0])
        except Exception:  # noqa: BLE001 - datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError...
            missing.append((path, configs))
    if missing:
        lines = []
        for path, configs in missing:
            named = sorted(c for c in configs if c)
            which = f' (configs: {", ".join(named[:6])}{", ..." if len(named) > 6 else ""})' if named else ''
            lines.append(f'  {path}{which}: hf download {path} --repo-type dataset')
        raise EvalError(
            f'--eval_dataset {" ".join(specs)}: offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set) and these '
            f'Hugging Face datasets are not in the local cache:\n' + '\n'.join(lines) +
            '\nOn a machine with network access run the same `lmforge eval` once (or the commands above), then copy '
            'the Hugging Face cache (~/.cache/huggingface, or $HF_HOME) here; or evaluate on local files with a '
            'YAML task or a custom .jsonl set.')


def hf_lm(model, tokenizer, batch_size: int):
    """The harness's HuggingFace LM around an already loaded model (adapters merged)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def check_api_requirements(api: str, tokenizer_dir: str | None) -> None:
    import importlib.util

    missing = [m for m in ('tenacity', 'aiohttp', 'requests') if importlib.util.find_spec(m) is None]
    if missing:
        raise EvalError(f'--eval_url: the harness\'s API models need {", ".join(missing)}: pip install "lm-eval[api]"')
    if api != 'chat' and not tokenizer_dir:
        raise EvalError('--eval_url with --eval_url_api completions needs the model\'s tokenizer (log-likelihoods are '
                        'taken on token ids): pass --model DIR_OR_ID of the served model')


def api_lm(base_url: str, api: str, model_name: str, tokenizer_dir: str | None, api_key: str | None,
           max_length: int, max_gen_toks: int):
    """The harness's OpenAI-compatible API LM: completions (needs a tokenizer: log-likelihoods are computed on token
    ids the server echoes) or chat completions (generation tasks only)."""
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI

    check_api_requirements(api, tokenizer_dir)
    base = base_url.rstrip('/')
    header = {'Authorization': f'Bearer {api_key}'} if api_key else None
    common = dict(model=model_name, max_retries=1, num_concurrent=1, max_length=max_length, header=header,
                  max_gen_toks=max_gen_toks, timeout=600)
    if api == 'chat':
        return LocalChatCompletion(base_url=f'{base}/chat/completions', tokenizer_backend=None,
                                   tokenized_requests=False, **common)
    # The server's legacy logprobs hold every generated token (the end-of-turn token included), so the harness's own
    # ``token_logprobs[ctxlen:-1]`` after echo + max_tokens=1 is the continuation's.
    return LocalCompletionsAPI(base_url=f'{base}/completions', tokenizer_backend='huggingface',
                               tokenizer=tokenizer_dir, tokenized_requests=True, batch_size=1, **common)


def run_harness(lm, tm, names: list[str], specs: list[str], limit: int | None, num_fewshot: int | None,
                apply_chat_template: bool, seed: int, system: str | None = None) -> dict:
    """simple_evaluate; returns {'results': {task: {metric: value}}, 'n_samples': {task: n}, 'raw': harness output
    without per-sample logs}."""
    import lm_eval

    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                                      apply_chat_template=apply_chat_template, log_samples=False,
                                      system_instruction=system, random_seed=seed, numpy_random_seed=seed,
                                      torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=0)
    except (ConnectionError, FileNotFoundError) as e:
        datasets = sorted(hub_datasets(tm, names))
        raise EvalError(f'--eval_dataset {" ".join(specs)}: the harness could not load its data ({type(e).__name__}: '
                        f'{str(e)[:300]})' + (f'; it needs the Hugging Face datasets {", ".join(datasets)}: run '
                                              '`hf download ID --repo-type dataset` for each where there is network '
                                              'access' if datasets else '')) from None
    if out is None:
        raise EvalError('lm-eval returned no results')
    results, n_samples = {}, {}
    for task, metrics in out.get('results', {}).items():
        clean = {}
        for key, value in metrics.items():
            if key in ('alias', 'sample_len', 'sample_count') or 'stderr' in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(',')
            clean[metric if filt in ('none', '') else f'{metric} ({filt})'] = float(value)
        results[task] = clean
    for task, n in (out.get('n-samples') or {}).items():
        n_samples[task] = n.get('effective', n.get('original')) if isinstance(n, dict) else n
    raw = {k: v for k, v in out.items() if k not in ('samples',)}
    return {'results': results, 'n_samples': n_samples, 'raw': raw}
