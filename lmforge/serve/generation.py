"""What the endpoints share: a request's settings (checked, with the server's defaults), its token budget within
the context, the rows it hands to the engine's thread and the events that come back, and SSE framing."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from typing import TYPE_CHECKING

from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from lmforge.serve.protocol import ApiError
from lmforge.serve.worker import SHUTDOWN_MESSAGE, CallJob, GenerateJob, WorkerStopped

if TYPE_CHECKING:
    from lmforge.serve.app import ServerState, Slot

MAX_N = 128
MAX_LOGPROBS = 20
MAX_STOP = 16
_TOKEN_ID = re.compile(r'[0-9]{1,12}')  # ASCII digits only ("²".isdigit()), short enough for int()


def check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise ApiError(400, f'{param}: {message}', param=param, code='invalid_value')


def request_config(state: ServerState, req, max_new_tokens: int, logprobs: bool = False, top_logprobs: int = 0):
    """The engine's `RequestConfig` for one request: its values, checked, else the server's defaults."""
    from lmforge.infer.engine import RequestConfig

    d = state.defaults
    temperature = d.temperature if req.temperature is None else req.temperature
    top_p = d.top_p if req.top_p is None else req.top_p
    top_k = d.top_k if req.top_k is None else req.top_k
    repetition_penalty = d.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty
    check(0 <= temperature <= 2, 'temperature', f'must be in [0, 2], got {temperature}')
    check(0 < top_p <= 1, 'top_p', f'must be in (0, 1], got {top_p}')
    check(top_k >= -1, 'top_k', f'must be >= 0 (0 or -1: off), got {top_k}')
    check(repetition_penalty > 0, 'repetition_penalty', f'must be positive, got {repetition_penalty}')
    check(-2 <= req.presence_penalty <= 2, 'presence_penalty', f'must be in [-2, 2], got {req.presence_penalty}')
    check(-2 <= req.frequency_penalty <= 2, 'frequency_penalty', f'must be in [-2, 2], got {req.frequency_penalty}')
    check(1 <= req.n <= MAX_N, 'n', f'must be in [1, {MAX_N}], got {req.n}')
    check(req.stream or req.stream_options is None, 'stream_options', 'is only allowed with "stream": true')
    if req.seed is not None:
        check(-(1 << 63) <= req.seed < (1 << 63), 'seed', 'must fit in 64 bits')
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    check(len(stop) <= MAX_STOP, 'stop', f'at most {MAX_STOP} strings, got {len(stop)}')
    stop = list(dict.fromkeys(s for s in [*stop, *(d.stop or [])] if s))
    bias = None
    if req.logit_bias:
        vocab = vocab_size(state.engine)
        bias = {}
        for key, value in req.logit_bias.items():
            check(_TOKEN_ID.fullmatch(key) is not None and int(key) < vocab, 'logit_bias',
                  f'keys are token ids in [0, {vocab}), got {key[:40]!r}')
            check(-100 <= value <= 100, 'logit_bias', f'values are in [-100, 100], got {value}')
            bias[int(key)] = float(value)
    return RequestConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         top_k=max(top_k, 0), repetition_penalty=repetition_penalty, stop=stop, seed=req.seed,
                         presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                         logprobs=logprobs, top_logprobs=top_logprobs, logit_bias=bias)


def row_configs(config, n: int) -> list:
    """``n`` copies of ``config``; with a seed, copy i samples with seed + i (the first matches n=1)."""
    return [config if i == 0 or config.seed is None else dataclasses.replace(config, seed=config.seed + i)
            for i in range(n)]


def token_budget(state: ServerState, n_prompt: int, requested: int | None, what: str, allow_zero: bool = False) -> int:
    """Tokens to generate: the request's max_tokens if it fits the context, else a 400 naming the limits; by
    default the server's max_new_tokens, cut to what the context leaves."""
    limit = state.max_model_len
    if requested is not None:
        check(requested >= (0 if allow_zero else 1), 'max_tokens',
              f'must be at least {0 if allow_zero else 1}, got {requested}')
    if limit and (n_prompt > limit or (n_prompt == limit and requested != 0)):
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, your {what} resulted "
                            f'in {n_prompt} tokens. Please reduce the length of the {what}.', param=what,
                       code='context_length_exceeded')
    if requested is not None:
        if limit and n_prompt + requested > limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                                f'{n_prompt + requested} tokens ({n_prompt} in the {what}, {requested} in the '
                                f'completion). Please reduce the length of the {what} or completion.',
                           param='max_tokens', code='context_length_exceeded')
        return requested
    default = state.defaults.max_new_tokens
    return min(default, limit - n_prompt) if limit else default


def vocab_size(engine) -> int:
    try:
        return engine.model.get_input_embeddings().num_embeddings
    except AttributeError:
        return len(engine.tokenizer)


class Generation:
    """Rows submitted to the worker, and the events they send back to this event loop."""

    def __init__(self, state: ServerState, prompts: list[list[int]], configs: list, adapter: str | None):
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.rows = [state.engine.new_sequence(p, c, self._listener) for p, c in zip(prompts, configs)]
        for i, row in enumerate(self.rows):
            row.index = i
            if row.config.max_new_tokens == 0:  # echo-only completions: nothing to generate
                row.finish('length')
        try:
            state.worker.submit(GenerateJob(self.rows, adapter))
        except WorkerStopped as e:
            raise ApiError(503, f'The server cannot take requests now: {e}.', code='unavailable') from None
        state.generations.add(self)

    def _listener(self, row, delta: str, logprobs: list) -> None:  # called on the worker thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (row, delta, logprobs, row.finish_reason))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            row.cancel()

    async def events(self):
        """(row, text, logprobs, finish_reason or None) as they come, until every row has finished."""
        remaining = len(self.rows)
        try:
            while remaining:
                event = await self.queue.get()
                if event[3] is not None:
                    remaining -= 1
                yield event
        finally:
            self.state.generations.discard(self)

    async def wait(self, request=None) -> list:
        """The rows once all have finished; with ``request``, they are cancelled if its client goes away first (an
        answer nobody will read would hold its slot and the engine until max_tokens)."""
        watcher = asyncio.ensure_future(self._cancel_on_disconnect(request)) if request is not None else None
        try:
            async for _ in self.events():
                pass
        finally:
            if watcher is not None:
                watcher.cancel()
        for row in self.rows:
            if row.finish_reason == 'error':
                raise generation_error(row.error)
        return self.rows

    def cancel(self) -> None:
        for row in self.rows:
            row.cancel()

    async def _cancel_on_disconnect(self, request) -> None:
        with contextlib.suppress(Exception):  # the body is read: what comes next is the disconnect
            while (await request.receive())['type'] != 'http.disconnect':
                pass
            self.cancel()


def generation_error(message: str | None) -> ApiError:
    if message == SHUTDOWN_MESSAGE:
        return ApiError(503, f'The server cannot finish this request: {message}.', code='unavailable')
    return ApiError(500, f'Generation failed: {message}', code='generation_failed')


async def run_call(state: ServerState, fn, *args, **kwargs):
    """Run ``fn`` on the engine's thread (between batches) and await its result."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def done(result, error):
        def settle():
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(result)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)

    try:
        state.worker.submit(CallJob(fn, args, kwargs, done))
    except WorkerStopped as e:
        raise ApiError(503, f'The server cannot take requests now: {e}.', code='unavailable') from None
    try:
        return await future
    except WorkerStopped as e:
        raise ApiError(503, f'The server cannot finish this request: {e}.', code='unavailable') from None


def sse(obj) -> str:
    return f'data: {json.dumps(obj, ensure_ascii=False)}\n\n'


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {'prompt_tokens': prompt_tokens, 'completion_tokens': completion_tokens,
            'total_tokens': prompt_tokens + completion_tokens}


def streaming(body, slot: Slot, gen: Generation) -> StreamingResponse:
    """An SSE response that frees the slot and stops generating however it ends (done, or the client gone)."""
    def finish():
        gen.cancel()
        slot.release()

    async def guarded():
        try:
            async for piece in body:
                yield piece
        finally:
            finish()

    async def finish_on_loop():  # async: a sync background task would run on a threadpool thread
        finish()

    return StreamingResponse(guarded(), media_type='text/event-stream', background=BackgroundTask(finish_on_loop),
                             headers={'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no'})
