"""``--infer_backend``: the transformers engine ("pt") or one of the optional vLLM / SGLang / LMDeploy engines.

    engine = make_engine('vllm', model='output/checkpoint-100', named_adapters={'math': 'out/math'})

The optional engines are extras (``pip install "lmforge[vllm]"``, CUDA only), imported only when chosen: a missing
package or a machine without CUDA is an `ArgumentError` naming --infer_backend, raised before any model is loaded.

They serve the same way as the pt engine (the `Engine` base of lmforge/infer/engine.py): prompts are rendered by
lmforge's own template code and tokenized here, so the engine receives token ids (what training saw, not the
library's own chat template); generation ends on the same stop ids; generated tokens are pushed one by one into the
same `Sequence`s, so stop strings, detokenization, finish reasons, logprobs and SSE streaming behave as with pt.
LoRA adapters go through each library's own LoRA support (vLLM `LoRARequest`, SGLang ``lora_paths``, LMDeploy's
PyTorch engine ``adapters``); one adapter applies per request, so adapters cannot be stacked.

What a library cannot do (embeddings everywhere, prompt logprobs on LMDeploy, presence/frequency penalties and
logit_bias on LMDeploy) is refused with `unsupported`: a 400 in OpenAI's shape from the server, a plain lmforge
error elsewhere.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import os

from lmforge.errors import ArgumentError, LmforgeError, ModelError
from lmforge.infer.engine import Engine, RequestConfig
from lmforge.infer.sequence import TokenLogprob

# backend -> (module, class, the package it needs)
BACKENDS = {
    'pt': ('lmforge.infer.engine', 'PtEngine', None),
    'vllm': ('lmforge.infer.vllm_engine', 'VllmEngine', 'vllm'),
    'sglang': ('lmforge.infer.sglang_engine', 'SglangEngine', 'sglang'),
    'lmdeploy': ('lmforge.infer.lmdeploy_engine', 'LmdeployEngine', 'lmdeploy'),
}
DEFAULT_ADAPTER = 'lmforge-default'  # the name of a plain --adapters dir (or a LoRA --model) on the LoRA engines


def check_backend(backend: str) -> None:
    """Refuse a backend that cannot run here, naming --infer_backend; cheap (nothing heavy is imported)."""
    if backend not in BACKENDS:
        raise ArgumentError('infer_backend', f'unknown engine {backend!r}; choose one of {", ".join(BACKENDS)}')
    package = BACKENDS[backend][2]
    if package is None:
        return
    if importlib.util.find_spec(package) is None:
        raise ArgumentError('infer_backend', f'{backend} is not installed: pip install "lmforge[{backend}]" (needs a '
                                             'CUDA GPU), or use --infer_backend pt (transformers)')
    if not cuda_available():
        raise ArgumentError('infer_backend', f'{backend} needs a CUDA GPU and none is visible here '
                                             '(torch.cuda.is_available() is False); use --infer_backend pt')


def cuda_available() -> bool:
    """torch.cuda.is_available() through NVML where torch can: the parent process must not initialize CUDA before
    vLLM/SGLang fork their workers."""
    import torch

    before = os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK')
    os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] = '1'
    try:
        return torch.cuda.is_available()
    finally:
        if before is None:
            del os.environ['PYTORCH_NVML_BASED_CUDA_CHECK']
        else:
            os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] = before


def make_engine(backend: str = 'pt', **kwargs) -> Engine:
    """The engine of ``backend`` built with ``kwargs`` (PtEngine's names; the optional engines also take
    ``max_model_len`` and ``engine_kwargs``, the library's own settings)."""
    check_backend(backend)
    module, name, _ = BACKENDS[backend]
    return getattr(importlib.import_module(module), name)(**kwargs)


def import_backend(package: str):
    """The library, or an error naming --infer_backend when it is installed but broken (CUDA/torch mismatch...)."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ArgumentError('infer_backend', f'{package} is installed but cannot be imported: {e}') from None


def unsupported(backend: str, what: str, param: str | None = None) -> Exception:
    """The error for a request the engine cannot serve: the server answers it as a 400 (OpenAI's shape), the CLI
    prints it like any lmforge error."""
    from lmforge.serve.protocol import ApiError

    return _unsupported_class(ApiError)(400, f'{what} is not supported by the {backend} engine (--infer_backend '
                                             f'{backend}); serve with --infer_backend pt for it', param=param,
                                        code='unsupported_value')


@functools.cache
def _unsupported_class(api_error: type) -> type:
    return type('UnsupportedByEngine', (api_error, LmforgeError), {'__module__': __name__})


class BackendEngine(Engine):
    """What the vLLM / SGLang / LMDeploy engines share beyond `Engine`: the model's config, the adapter table, and
    refusing what the library cannot do."""

    backend = ''
    unsupported_settings: tuple = ()  # RequestConfig fields this library has no equivalent of

    def _open(self, model, adapters, named_adapters, template, system, use_hf, revision, token,
              trust_remote_code) -> tuple[dict, str | None]:
        """Checkpoint, tokenizer, template, stop ids; returns the LoRA table ({name: dir}) and the default adapter."""
        from transformers import AutoConfig

        named = self._open_checkpoint(model, adapters, named_adapters, template, system, use_hf, revision, token,
                                      trust_remote_code)
        try:
            self.hf_config = AutoConfig.from_pretrained(self.bundle.base_dir, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelError(f'could not read the config of {self.bundle.base_dir}: {e}') from None
        self._set_stop_ids(lambda: _base_generation_config(self.bundle.base_dir, self.hf_config))
        table, default = lora_table(self.bundle.adapters, named, self.backend)
        self.default_adapter = default
        return table, default

    @property
    def text_config(self):
        config = self.hf_config
        return config.get_text_config() if hasattr(config, 'get_text_config') else config

    @property
    def max_model_len(self) -> int | None:
        return getattr(self.text_config, 'max_position_embeddings', None)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    def adapter_for(self, adapter: str | None) -> str | None:
        """The LoRA a request runs with: the named one, else the default (a plain --adapters dir), else none."""
        if adapter is None:
            return self.default_adapter
        if adapter not in self.adapter_names:
            raise ValueError(f'no adapter named {adapter!r} is loaded; loaded: {self.adapter_names}')
        return adapter

    def check_config(self, config: RequestConfig) -> None:
        """Refuse a request setting the library has no equivalent of (rather than ignore it)."""
        for name in self.unsupported_settings:
            if getattr(config, name):
                raise unsupported(self.backend, name, param=name)

    def new_sequence(self, prompt_ids, config: RequestConfig, listener=None):
        self.check_config(config)
        return super().new_sequence(prompt_ids, config, listener)

    def prompt_logprobs(self, prompt_ids, top_n: int = 0, adapter: str | None = None):
        raise unsupported(self.backend, 'prompt logprobs (echo with logprobs)', param='echo')

    def embed(self, inputs, pooling: str = 'mean', adapter: str | None = None, max_batch_size: int = 16):
        raise unsupported(self.backend, 'embeddings (it runs the model as a generator)', param='input')


def _base_generation_config(base_dir: str, hf_config):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(base_dir)
    except OSError:
        return GenerationConfig.from_model_config(hf_config)


def lora_table(plain: list, named: dict, backend: str) -> tuple[dict, str | None]:
    """{name: dir} of the LoRA adapters the engine loads, and the name applied to requests that choose none (a plain
    --adapters dir, or --model given as a LoRA checkpoint). These engines apply one LoRA per request: adapters that
    would have to be stacked are refused with the merge that replaces them."""
    table = dict(named)
    default = None
    if len(plain) > 1 or (plain and named):
        stacked = plain[0] if plain else ''
        raise ArgumentError('adapters', f'the {backend} engine applies one LoRA adapter per request and cannot stack '
                                        f'{stacked} with other adapters: merge it into its base first (lmforge export '
                                        f'--adapters {stacked} --merge_lora true --output_dir merged) and serve merged')
    if plain:
        default = DEFAULT_ADAPTER
        table[default] = plain[0]
    for name, path in table.items():
        lora_rank(path, name)
    return table, default


def lora_rank(path: str, name: str = '') -> int:
    """The rank of a LoRA checkpoint, after checking it is one these engines load (plain LoRA: no DoRA)."""
    where = f'{name}={path}' if name and name != DEFAULT_ADAPTER else path
    config_path = os.path.join(path, 'adapter_config.json')
    try:
        with open(config_path, encoding='utf-8') as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ArgumentError('adapters', f'{where}: cannot read adapter_config.json: {e}') from None
    peft_type = str(config.get('peft_type', '')).upper()
    if peft_type != 'LORA' or config.get('use_dora'):
        kind = 'DoRA' if config.get('use_dora') else peft_type or 'unknown'
        raise ArgumentError('adapters', f'{where} is a {kind} adapter; vllm/sglang/lmdeploy serve plain LoRA only: '
                                        'merge it (lmforge export --merge_lora true) or use --infer_backend pt')
    return int(config.get('r') or 8)


def vllm_lora_rank(table: dict) -> int:
    """vLLM's --max_lora_rank: the smallest size it allows that fits every adapter."""
    need = max(lora_rank(path, name) for name, path in table.items())
    for size in (8, 16, 32, 64, 128, 256, 320, 512):
        if size >= need:
            return size
    raise ArgumentError('adapters', f'a LoRA rank of {need} is over the 512 vllm supports')


def vllm_sampling(config: RequestConfig, stop_ids: list[int]) -> dict:
    """vLLM `SamplingParams` keyword arguments for one row (one sequence: n>1 is several rows)."""
    kw = dict(n=1, max_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
              top_k=config.top_k if config.top_k > 0 else -1, repetition_penalty=config.repetition_penalty,
              presence_penalty=config.presence_penalty, frequency_penalty=config.frequency_penalty,
              seed=config.seed, stop=list(config.stop or []) or None, stop_token_ids=list(stop_ids),
              skip_special_tokens=True)
    if config.logprobs:
        kw['logprobs'] = config.top_logprobs
    if config.logit_bias:
        kw['logit_bias'] = {int(k): float(v) for k, v in config.logit_bias.items()}
    return kw


def sglang_sampling(config: RequestConfig, stop_ids: list[int], fields=None) -> dict:
    """SGLang's ``sampling_params`` for one row; ``fields``: the names its SamplingParams takes (a seed only where
    the installed version has ``sampling_seed``)."""
    params = dict(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                  top_k=config.top_k if config.top_k > 0 else -1, repetition_penalty=config.repetition_penalty,
                  presence_penalty=config.presence_penalty, frequency_penalty=config.frequency_penalty,
                  stop_token_ids=list(stop_ids), skip_special_tokens=True)
    if config.stop:
        params['stop'] = list(config.stop)
    if config.logit_bias:
        params['logit_bias'] = {str(k): float(v) for k, v in config.logit_bias.items()}
    if config.seed is not None and (fields is None or 'sampling_seed' in fields):
        params['sampling_seed'] = config.seed
    return params


def lmdeploy_generation(config: RequestConfig, stop_ids: list[int]) -> dict:
    """LMDeploy `GenerationConfig` keyword arguments for one row. Stop strings are not passed: LMDeploy turns them
    into the ids of single tokens holding them; the row's `Sequence` matches them across tokens instead."""
    kw = dict(n=1, max_new_tokens=config.max_new_tokens, do_sample=config.temperature > 0,
              temperature=config.temperature if config.temperature > 0 else 1.0, top_p=config.top_p,
              top_k=max(config.top_k, 0), repetition_penalty=config.repetition_penalty,
              random_seed=config.seed, stop_token_ids=list(stop_ids), skip_special_tokens=True)
    if config.logprobs:
        kw['logprobs'] = max(config.top_logprobs, 1)  # LMDeploy returns none for 0
    return kw


def token_logprob(token_id: int, entries: dict, top_n: int) -> TokenLogprob:
    """A `TokenLogprob` from a library's {token_id: logprob} of one position (the chosen token among them; vLLM's
    values are `Logprob` objects)."""
    values = {int(t): float(getattr(v, 'logprob', v)) for t, v in (entries or {}).items()}
    top = sorted(values.items(), key=lambda kv: -kv[1])[:top_n] if top_n > 0 else []
    return TokenLogprob(token_id, values.get(token_id, -math.inf), top)
