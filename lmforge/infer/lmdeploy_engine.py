"""The LMDeploy engine (``--infer_backend lmdeploy``): TurboMind (or LMDeploy's PyTorch engine) under lmforge's
server.

An LMDeploy pipeline runs its engine from an asyncio loop on a thread of its own; the rows of a `generate_rows` call
become concurrent streaming requests on that loop (token ids as lmforge rendered them, no LMDeploy chat template),
each pushing its new tokens into its `Sequence`. LoRA adapters need LMDeploy's PyTorch engine (``adapters``), which
is chosen when there are any; TurboMind otherwise (LMDeploy falls back to PyTorch for models TurboMind lacks).
LMDeploy has no presence/frequency penalty, logit_bias, prompt logprobs or embeddings: those are refused.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools

from lmforge.errors import ArgumentError, ModelError
from lmforge.infer.backends import BackendEngine, import_backend, lmdeploy_generation, token_logprob


class LmdeployEngine(BackendEngine):
    """`lmdeploy.pipeline`, its async engine driven from this side with token ids."""

    backend = 'lmdeploy'
    unsupported_settings = ('presence_penalty', 'frequency_penalty', 'logit_bias')

    def __init__(self, model: str | None, adapters: list | None = None, torch_dtype: str = 'auto',
                 attn_impl: str | None = None, template: str | None = None, system: str | None = None,
                 use_hf: bool = False, revision: str | None = None, token: str | None = None,
                 trust_remote_code: bool = False, named_adapters: dict | None = None,
                 max_model_len: int | None = None, engine_kwargs: dict | None = None):
        """PtEngine's arguments, plus ``max_model_len`` (LMDeploy's session_len) and ``engine_kwargs`` (fields of
        its TurbomindEngineConfig / PytorchEngineConfig, e.g. cache_max_entry_count, tp)."""
        lmdeploy = import_backend('lmdeploy')

        if torch_dtype == 'float32':
            raise ArgumentError('torch_dtype', 'lmdeploy computes in float16 or bfloat16: use auto, bfloat16 or '
                                               'float16')
        table, _ = self._open(model, adapters, named_adapters, template, system, use_hf, revision, token,
                              trust_remote_code)
        settings = {'dtype': torch_dtype}
        if max_model_len:
            settings['session_len'] = max_model_len
        settings.update(engine_kwargs or {})
        extra = {'trust_remote_code': True} if trust_remote_code else {}
        try:
            config = (lmdeploy.PytorchEngineConfig(adapters=table, **settings) if table
                      else lmdeploy.TurbomindEngineConfig(**settings))
            self.pipe = lmdeploy.pipeline(self.bundle.base_dir, backend_config=config, log_level='ERROR', **extra)
        except (ValueError, TypeError, OSError) as e:
            raise ModelError(f'lmdeploy could not load {self.bundle.base_dir}: {e}') from None
        self._engine = getattr(self.pipe, 'async_engine', self.pipe)  # older versions: the pipeline is the engine
        thread = getattr(self.pipe, 'internal_thread', None) or getattr(self._engine, 'internal_thread')
        self._loop = thread.loop
        self._sessions = itertools.count(1)

    @property
    def max_model_len(self) -> int | None:
        length = getattr(getattr(self.pipe, 'backend_config', None), 'session_len', None)
        return length or super().max_model_len

    def generate_rows(self, rows: list, adapter: str | None = None) -> None:
        """Generate every row as a concurrent request of LMDeploy; returns when each has finished."""
        rows = [r for r in rows if not r.done]
        if not rows:
            return
        name = self.adapter_for(adapter)

        async def all_rows():
            await asyncio.gather(*(self._row(row, name) for row in rows), return_exceptions=True)

        asyncio.run_coroutine_threadsafe(all_rows(), self._loop).result()
        failed = [r for r in rows if r.error]
        if failed:
            raise RuntimeError(f'lmdeploy generation failed: {failed[0].error}')

    async def _row(self, row, adapter_name: str | None) -> None:
        from lmdeploy import GenerationConfig

        cfg = row.config
        session_id = next(self._sessions)
        kwargs = dict(gen_config=GenerationConfig(**lmdeploy_generation(cfg, self.stop_ids)),
                      input_ids=list(row.prompt_ids), do_preprocess=False, adapter_name=adapter_name)
        gen, seen = None, 0
        try:
            if hasattr(self._engine, 'preprocess'):  # 0.16+: validate and tokenize first, then generate
                gen = self._engine.generate(await self._engine.preprocess(None, session_id, **kwargs),
                                            stream_response=True)
            else:
                gen = self._engine.generate(None, session_id, stream_response=True, **kwargs)
            async for out in gen:
                new = out.generate_token_len - seen  # token_ids may repeat ids held back for detokenization
                ids = list(out.token_ids or [])
                ids = ids[max(0, len(ids) - new):] if new > 0 else []
                entries = out.logprobs or []
                entries = entries[len(entries) - len(ids):] if len(entries) >= len(ids) else []
                for k, tid in enumerate(ids):
                    lp = token_logprob(tid, entries[k], cfg.top_logprobs) if cfg.logprobs and entries else None
                    row.push(tid, lp)
                seen = max(seen, out.generate_token_len)
                if out.finish_reason:
                    if out.finish_reason == 'error':
                        row.fail(f'lmdeploy: {getattr(out, "error_message", None) or "generation failed"}')
                    row.finish(out.finish_reason if out.finish_reason in ('stop', 'length') else 'abort')
                    return
                if row.done or row.cancelled:  # a stop string, its own max tokens, or its client gone
                    row.finish('abort')
                    return
            row.finish('stop')
        except Exception as e:
            row.fail(f'{type(e).__name__}: {e}')
        finally:
            if gen is not None:  # ends the request in LMDeploy when it stopped on our side
                with contextlib.suppress(Exception):
                    await gen.aclose()
