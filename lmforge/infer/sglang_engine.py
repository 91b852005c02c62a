"""The SGLang engine (``--infer_backend sglang``): SGLang's runtime (RadixAttention prefix cache, its scheduler) under
lmforge's server.

`sglang.Engine` runs its scheduler and detokenizer in subprocesses and talks to them from an asyncio loop of its
own; every call here runs on that loop (`run_until_complete`, one caller at a time), so the rows of a
`generate_rows` call are concurrent streaming requests of SGLang, each pushing its new tokens into its `Sequence`.
Named adapters are SGLang LoRA adapters (``lora_paths``, chosen per request by ``lora_path``).
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import threading

from lmforge.errors import ModelError
from lmforge.infer.backends import BackendEngine, import_backend, sglang_sampling, token_logprob, unsupported


class SglangEngine(BackendEngine):
    """`sglang.Engine` (offline, in this process's asyncio loop of its own)."""

    backend = 'sglang'

    def __init__(self, model: str | None, adapters: list | None = None, torch_dtype: str = 'auto',
                 attn_impl: str | None = None, template: str | None = None, system: str | None = None,
                 use_hf: bool = False, revision: str | None = None, token: str | None = None,
                 trust_remote_code: bool = False, named_adapters: dict | None = None,
                 max_model_len: int | None = None, engine_kwargs: dict | None = None):
        """PtEngine's arguments, plus ``max_model_len`` (SGLang's context_length) and ``engine_kwargs`` (more
        `sglang.Engine` / ServerArgs settings, e.g. mem_fraction_static, tp_size)."""
        sglang = import_backend('sglang')

        table, _ = self._open(model, adapters, named_adapters, template, system, use_hf, revision, token,
                              trust_remote_code)
        kwargs = dict(model_path=self.bundle.base_dir, tokenizer_path=self.bundle.tokenizer_dir, dtype=torch_dtype,
                      trust_remote_code=trust_remote_code)
        if max_model_len:
            kwargs['context_length'] = max_model_len
        if table:
            kwargs['lora_paths'] = [f'{name}={path}' for name, path in table.items()]
        kwargs.update(engine_kwargs or {})
        try:
            self.sgl = sglang.Engine(**kwargs)
        except (ValueError, TypeError, OSError) as e:
            raise ModelError(f'sglang could not load {self.bundle.base_dir}: {e}') from None
        self._lock = threading.Lock()  # the engine's loop runs one call at a time
        self._ids = itertools.count()
        try:
            from sglang.srt.sampling.sampling_params import SamplingParams
            self._fields = set(getattr(SamplingParams, '__struct_fields__', ())) or \
                set(inspect.signature(SamplingParams).parameters)
        except (ImportError, TypeError, ValueError):
            self._fields = None
        takes = inspect.signature(self.sgl.async_generate).parameters
        self._rid = 'rid' in takes  # our own request ids, to abort a row that ended on our side
        self._incremental = bool(getattr(self.sgl.server_args, 'incremental_streaming_output', False))

    @property
    def max_model_len(self) -> int | None:
        length = getattr(getattr(self.sgl, 'tokenizer_manager', None), 'context_len', None)
        return length or super().max_model_len

    def check_config(self, config) -> None:
        super().check_config(config)
        if not 0 < config.repetition_penalty <= 2:
            raise unsupported(self.backend, f'repetition_penalty {config.repetition_penalty} (it takes (0, 2])',
                              param='repetition_penalty')

    def _run(self, coro):
        with self._lock:
            return self.sgl.loop.run_until_complete(coro)

    def generate_rows(self, rows: list, adapter: str | None = None) -> None:
        """Generate every row as a concurrent streaming request of SGLang; returns when each has finished."""
        rows = [r for r in rows if not r.done]
        if not rows:
            return
        lora = self.adapter_for(adapter)

        async def all_rows():
            await asyncio.gather(*(self._row(row, lora) for row in rows), return_exceptions=True)

        self._run(all_rows())
        failed = [r for r in rows if r.error]
        if failed:
            raise RuntimeError(f'sglang generation failed: {failed[0].error}')

    async def _row(self, row, lora: str | None) -> None:
        cfg = row.config
        rid = f'lmforge-{next(self._ids)}'
        extra = {'rid': rid} if self._rid else {}
        if lora:
            extra['lora_path'] = lora
        pushed = 0
        try:
            stream = await self.sgl.async_generate(
                input_ids=list(row.prompt_ids), sampling_params=sglang_sampling(cfg, self.stop_ids, self._fields),
                return_logprob=True, top_logprobs_num=cfg.top_logprobs if cfg.logprobs else 0, stream=True, **extra)
            async for chunk in stream:
                meta = chunk.get('meta_info') or {}
                token_lps = meta.get('output_token_logprobs') or []
                ids = chunk.get('output_ids')
                if ids is None:  # versions that stream no ids: they are in the logprobs asked for
                    ids = [entry[1] for entry in token_lps]
                start = 0 if self._incremental else pushed
                tops = meta.get('output_top_logprobs') or []
                for k in range(start, len(ids)):
                    lp = None
                    if cfg.logprobs and k < len(token_lps):
                        top = tops[k] if k < len(tops) and tops[k] else []
                        lp = token_logprob(ids[k], {t[1]: t[0] for t in [*top, token_lps[k]]}, cfg.top_logprobs)
                    row.push(int(ids[k]), lp)
                pushed = len(ids)
                reason = meta.get('finish_reason')
                if reason:
                    kind = reason.get('type') if isinstance(reason, dict) else str(reason)
                    if kind == 'abort' and not row.cancelled:
                        message = reason.get('message') if isinstance(reason, dict) else None
                        row.fail(f'sglang aborted the request: {message or reason}')
                    row.finish(kind if kind in ('stop', 'length') else 'abort')
                    return
                if row.done or row.cancelled:  # a stop string, its own max tokens, or its client gone
                    row.finish('abort')
                    if self._rid:
                        with contextlib.suppress(Exception):  # it may have finished meanwhile
                            self.sgl.tokenizer_manager.abort_request(rid)
                    await stream.aclose()
                    return
            row.finish('stop')
        except Exception as e:
            row.fail(f'{type(e).__name__}: {e}')

    def prompt_logprobs(self, prompt_ids: list[int], top_n: int = 0, adapter: str | None = None) -> list:
        """[None, TokenLogprob, ...] of the prompt's tokens (SGLang's input logprobs, nothing generated)."""
        lora = self.adapter_for(adapter)
        extra = {'lora_path': lora} if lora else {}
        out = self._run(self.sgl.async_generate(
            input_ids=list(prompt_ids), sampling_params={'max_new_tokens': 0}, return_logprob=True,
            logprob_start_len=0, top_logprobs_num=top_n, **extra))
        meta = out.get('meta_info') or {}
        values = meta.get('input_token_logprobs') or []
        tops = meta.get('input_top_logprobs') or []
        result = [None]
        for i in range(1, len(prompt_ids)):
            entry = values[i] if i < len(values) else None
            if entry is None or entry[0] is None:
                result.append(token_logprob(prompt_ids[i], {}, 0))
                continue
            top = tops[i] if i < len(tops) and tops[i] else []
            result.append(token_logprob(prompt_ids[i], {t[1]: t[0] for t in [*top, entry]}, top_n))
        return result
