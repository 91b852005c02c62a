"""POST /v1/completions: raw prompts (text or token ids, no chat template), echo and legacy logprobs — what
lm-eval's ``local-completions`` asks for (token ids in, echo, max_tokens 0, logprobs 1)."""
from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from lmforge.serve.generation import (MAX_LOGPROBS, Generation, check, generation_error, request_config, row_configs,
                                      run_call, sse, streaming, token_budget, usage, vocab_size)
from lmforge.serve.protocol import CompletionRequest

if TYPE_CHECKING:
    from lmforge.serve.app import ServerState

MAX_PROMPTS = 2048  # prompts, and completions (prompts x n), per request: one request cannot flood the engine


def completion_prompts(engine, prompt) -> list[tuple[str | None, list[int]]]:
    """(text or None, token ids) of each prompt: strings are tokenized as they are (no chat template)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    check(bool(prompt), 'prompt', 'must not be empty')
    check(len(prompt) <= MAX_PROMPTS, 'prompt', f'at most {MAX_PROMPTS} prompts per request, got {len(prompt)}')
    vocab = vocab_size(engine)
    out = []
    for k, p in enumerate(prompt):
        if isinstance(p, str):
            ids = engine.tokenizer(p)['input_ids']
            out.append((p, ids))
        else:
            check(all(0 <= t < vocab for t in p), 'prompt', f'token ids must be in [0, {vocab})')
            out.append((None, list(p)))
        check(bool(out[-1][1]), 'prompt', f'prompt {k} has no tokens')
    return out


def completion_logprobs(engine, token_ids: list[int], entries: list, offset: int) -> dict:
    """OpenAI's legacy logprobs: tokens, token_logprobs, top_logprobs (the chosen token included) and text_offset."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    for token_id, entry in zip(token_ids, entries):
        text = engine.token_text(token_id)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        token_logprobs.append(None if entry is None else entry.logprob)
        if entry is None:
            top.append(None)
        else:
            alternatives = {engine.token_text(t): lp for t, lp in entry.top}
            alternatives.setdefault(text, entry.logprob)
            top.append(alternatives)
    return {'tokens': tokens, 'token_logprobs': token_logprobs, 'top_logprobs': top, 'text_offset': offsets}


async def complete(state: ServerState, req: CompletionRequest, request=None):
    name, adapter = state.resolve_model(req.model)
    check(req.suffix is None, 'suffix', 'is not supported by this engine')
    check(req.best_of is None or req.best_of == req.n, 'best_of', 'is not supported by this engine (only = n)')
    if req.logprobs is not None:
        check(0 <= req.logprobs <= MAX_LOGPROBS, 'logprobs', f'must be in [0, {MAX_LOGPROBS}], got {req.logprobs}')
    prompts = await run_in_threadpool(completion_prompts, state.engine, req.prompt)
    want_lp = req.logprobs is not None
    budgets = [token_budget(state, len(ids), req.max_tokens, 'prompt', allow_zero=True) for _, ids in prompts]
    configs = []
    for budget in budgets:
        configs += row_configs(request_config(state, req, budget, want_lp, req.logprobs or 0), req.n)
    check(len(configs) <= MAX_PROMPTS, 'n', f'at most {MAX_PROMPTS} completions per request (prompts x n), got '
                                           f'{len(prompts)} x {req.n}')
    slot = state.acquire()
    try:
        echoes = []
        for text, ids in prompts:
            if not req.echo:
                echoes.append(('', [], []))
                continue
            entries = (await run_call(state, state.engine.prompt_logprobs, ids, req.logprobs, adapter)
                       if want_lp else [None] * len(ids))
            echoes.append((text if text is not None else state.engine.tokenizer.decode(ids), ids, entries))
        gen = Generation(state, [ids for _, ids in prompts for _ in range(req.n)], configs, adapter)
    except BaseException:
        slot.release()
        raise
    meta = {'id': f'cmpl-{uuid.uuid4().hex}', 'created': int(time.time()), 'model': name}
    n_prompt = sum(len(ids) for _, ids in prompts)
    row_echo = [echoes[k // req.n] for k in range(len(gen.rows))]
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return streaming(completion_stream(state, gen, meta, row_echo, want_lp, n_prompt, include_usage), slot, gen)
    try:
        rows = await gen.wait(request)
    finally:
        slot.release()
    choices = []
    for row, (echo_text, echo_ids, echo_lps) in zip(rows, row_echo):
        lps = None
        if want_lp:
            lps = completion_logprobs(state.engine, echo_ids + [e.token_id for e in row.logprobs],
                                      echo_lps + row.logprobs, 0)
        choices.append({'index': row.index, 'text': echo_text + row.text, 'logprobs': lps,
                        'finish_reason': row.finish_reason})
    return {**meta, 'object': 'text_completion', 'choices': choices,
            'usage': usage(n_prompt, sum(len(r.token_ids) for r in rows))}


async def completion_stream(state: ServerState, gen: Generation, meta: dict, row_echo: list, want_lp: bool,
                            n_prompt: int, include_usage: bool):
    base = {**meta, 'object': 'text_completion'}
    extra = {'usage': None} if include_usage else {}
    offsets = {}

    def chunk(index, text, lps=None, finish=None):
        return sse({**base, 'choices': [{'index': index, 'text': text, 'logprobs': lps, 'finish_reason': finish}],
                    **extra})

    for row, (echo_text, echo_ids, echo_lps) in zip(gen.rows, row_echo):
        offsets[row.index] = len(echo_text)
        if echo_text:
            yield chunk(row.index, echo_text,
                        completion_logprobs(state.engine, echo_ids, echo_lps, 0) if want_lp else None)
    async for row, delta, lps, finish in gen.events():
        if finish == 'error':
            yield sse(generation_error(row.error).body())
            break
        if delta or (want_lp and lps) or finish is not None:
            lp = None
            if want_lp:
                lp = completion_logprobs(state.engine, [e.token_id for e in lps], lps, offsets[row.index])
            offsets[row.index] += len(delta)
            yield chunk(row.index, delta, lp, finish)
    else:
        if include_usage:
            yield sse({**base, 'choices': [], 'usage': usage(n_prompt, sum(len(r.token_ids) for r in gen.rows))})
    yield 'data: [DONE]\n\n'
