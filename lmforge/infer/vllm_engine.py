"""The vLLM engine (``--infer_backend vllm``): vLLM's scheduler, paged KV cache and kernels under lmforge's server.

The rows of one `generate_rows` call become requests of vLLM's engine (the token ids lmforge's templates rendered,
one `SamplingParams` each) stepped until all have finished; each step's new tokens are pushed into the rows'
`Sequence`s, so text streams as vLLM produces it. A row that ends on lmforge's side first (a stop string, its client
gone) is aborted in vLLM. Named adapters are `LoRARequest`s; echo with logprobs uses vLLM's ``prompt_logprobs``.
"""
from __future__ import annotations

import itertools
import threading

from lmforge.errors import ModelError
from lmforge.infer.backends import BackendEngine, import_backend, token_logprob, vllm_lora_rank, vllm_sampling

FINISH = {'stop': 'stop', 'length': 'length', 'abort': 'abort'}


class VllmEngine(BackendEngine):
    """vLLM's offline engine (`vllm.LLM`), driven step by step from the server's engine thread."""

    backend = 'vllm'

    def __init__(self, model: str | None, adapters: list | None = None, torch_dtype: str = 'auto',
                 attn_impl: str | None = None, template: str | None = None, system: str | None = None,
                 use_hf: bool = False, revision: str | None = None, token: str | None = None,
                 trust_remote_code: bool = False, named_adapters: dict | None = None,
                 max_model_len: int | None = None, engine_kwargs: dict | None = None):
        """PtEngine's arguments (``attn_impl`` is vLLM's own choice), plus ``max_model_len`` and ``engine_kwargs``
        (more `vllm.LLM` arguments, e.g. gpu_memory_utilization, tensor_parallel_size, enforce_eager)."""
        vllm = import_backend('vllm')
        from vllm.lora.request import LoRARequest

        table, _ = self._open(model, adapters, named_adapters, template, system, use_hf, revision, token,
                              trust_remote_code)
        kwargs = dict(model=self.bundle.base_dir, tokenizer=self.bundle.tokenizer_dir, dtype=torch_dtype,
                      trust_remote_code=trust_remote_code)
        if max_model_len:
            kwargs['max_model_len'] = max_model_len
        if table:
            kwargs.update(enable_lora=True, max_loras=len(table), max_lora_rank=vllm_lora_rank(table))
        kwargs.update(engine_kwargs or {})
        try:
            self.llm = vllm.LLM(**kwargs)
        except (ValueError, TypeError, OSError) as e:  # unsupported architecture, bad setting, context too long
            raise ModelError(f'vllm could not load {self.bundle.base_dir}: {e}') from None
        self._engine = self.llm.llm_engine
        self._loras = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(table.items())}
        self._lock = threading.Lock()  # one caller steps the engine at a time
        self._ids = itertools.count()

    @property
    def max_model_len(self) -> int | None:
        """vLLM's own context length (it may be below the model's when the KV cache is small)."""
        try:
            return self._engine.model_config.max_model_len
        except AttributeError:
            return super().max_model_len

    def _lora(self, adapter: str | None):
        name = self.adapter_for(adapter)
        return self._loras[name] if name else None

    def _add(self, prompt_ids: list[int], params, lora) -> str:
        rid = f'lmforge-{next(self._ids)}'
        self._engine.add_request(rid, {'prompt_token_ids': list(prompt_ids)}, params, lora_request=lora)
        return rid

    def generate_rows(self, rows: list, adapter: str | None = None) -> None:
        """Generate every row (vLLM batches them, continuously); returns when each has finished."""
        from vllm import SamplingParams

        rows = [r for r in rows if not r.done]
        if not rows:
            return
        lora = self._lora(adapter)
        with self._lock:
            live: dict = {}
            try:
                for row in rows:
                    live[self._add(row.prompt_ids, SamplingParams(**vllm_sampling(row.config, self.stop_ids)),
                                   lora)] = row
                self._drive(live)
            except Exception as e:
                if live:
                    self._engine.abort_request(list(live))
                for r in rows:
                    if not r.done:
                        r.fail(f'{type(e).__name__}: {e}')
                raise

    def _drive(self, live: dict) -> None:
        """Step vLLM until every request of ``live`` ({request id: row}) has finished, pushing each new token (with
        its logprob) into its row; rows finished or cancelled here are aborted there."""
        pushed = dict.fromkeys(live, 0)
        while live:
            gone = [rid for rid, row in live.items() if row.done or row.cancelled]
            if gone:
                self._engine.abort_request(gone)
                for rid in gone:
                    live.pop(rid).finish('abort')  # no-op for a row already finished
                continue
            if not self._engine.has_unfinished_requests():
                for row in live.values():
                    row.fail('vllm dropped the request')
                return
            for out in self._engine.step():
                row = live.get(out.request_id)
                if row is None:
                    continue
                completion = out.outputs[0]
                ids, entries = list(completion.token_ids), completion.logprobs
                for k in range(pushed[out.request_id], len(ids)):
                    lp = None
                    if row.config.logprobs and entries is not None and k < len(entries):
                        lp = token_logprob(ids[k], entries[k], row.config.top_logprobs)
                    row.push(ids[k], lp)
                pushed[out.request_id] = len(ids)
                if out.finished:
                    del live[out.request_id]
                    row.finish(FINISH.get(completion.finish_reason, 'stop'))  # no-op when the row ended itself

    def prompt_logprobs(self, prompt_ids: list[int], top_n: int = 0, adapter: str | None = None) -> list:
        """[None, TokenLogprob, ...] of the prompt's tokens, by vLLM's ``prompt_logprobs``."""
        from vllm import SamplingParams

        lora = self._lora(adapter)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_n)
        with self._lock:
            rid = self._add(prompt_ids, params, lora)
            entries, finished = None, False
            while not finished:
                if not self._engine.has_unfinished_requests():
                    raise RuntimeError('vllm dropped the prompt-logprobs request')
                for out in self._engine.step():
                    if out.request_id == rid:
                        entries = out.prompt_logprobs or entries
                        finished = out.finished
        entries = entries or []
        return [None] + [token_logprob(prompt_ids[i], entries[i] if i < len(entries) else None, top_n)
                         for i in range(1, len(prompt_ids))]
