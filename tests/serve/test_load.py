"""A bounded load test: 64 concurrent streaming clients (the official AsyncOpenAI client and raw SSE over httpx, chat
and completions, greedy and seeded sampling, stop strings, logprobs, n=2) against the real server with continuous
batching on, twice. No errors, every stream ends with its finish chunk(s) and ``data: [DONE]``, and the process's
memory does not grow from one wave to the next (the server runs in this process: its RSS is what is measured)."""
from __future__ import annotations

import asyncio
import gc
import json

import httpx
import openai
import psutil
import pytest

from .helpers import MODEL, GatedEngine, health

CLIENTS = 64
ROWS = CLIENTS + CLIENTS // 4  # a quarter of the raw SSE clients ask n=2
# RSS may grow this much from the end of the first wave to the end of the second. The first wave pays for one-time
# allocations (threads, connection buffers, the allocator's arenas: ~20 MiB); the second grows it by < 1 MiB here.
# 8 MiB over 64 requests is 128 KiB each: a request's logits, KV cache or responses kept alive would exceed it.
GROWTH_BOUND_MIB = 8


@pytest.fixture(scope='module')
def loaded_server(engine):
    """The real engine behind a recorder of batch sizes (its gate open: nothing is held)."""
    from lmforge.serve import create_app, start_server

    recorder = GatedEngine(engine)
    recorder.gate.set()
    handle = start_server(create_app(recorder, served_model_name=MODEL, max_concurrency=CLIENTS, max_batch_size=16,
                                     admit_after=4))  # requests join running batches (continuous batching)
    yield handle, recorder
    handle.stop()


def words(i: int) -> str:
    return 'abcdefgh'[:i % 8 + 1]


async def sdk_stream(client: openai.AsyncOpenAI, i: int) -> int:
    """A chat stream through the official SDK: its text and finish reason, checked against usage."""
    sampled = dict(temperature=0.9, seed=i) if i % 2 else {}
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{'role': 'user', 'content': f'Last letter: {words(i)}'}], max_tokens=6 + i % 7,
        stream=True, stream_options={'include_usage': True}, presence_penalty=1.0, **sampled)
    finishes, usage = [], None
    async for chunk in stream:
        finishes += [c.finish_reason for c in chunk.choices if c.finish_reason]
        usage = chunk.usage or usage
    assert len(finishes) == 1 and finishes[0] in ('stop', 'length'), finishes
    assert usage is not None and 1 <= usage.completion_tokens <= 6 + i % 7
    return usage.completion_tokens


async def sse_stream(client: httpx.AsyncClient, url: str, i: int) -> int:
    """A raw SSE stream (chat or completions, n=2 for some): every line is a JSON chunk or the final [DONE]."""
    n = 2 if i % 4 == 0 else 1
    if i % 2:
        path, body = '/completions', {'prompt': f'The quick brown {words(i)}', 'logprobs': 1, 'stop': ['x']}
    else:
        path, body = '/chat/completions', {'messages': [{'role': 'user', 'content': f'Hi {words(i)}'}]}
    body.update(model=MODEL, max_tokens=5 + i % 6, n=n, stream=True, stream_options={'include_usage': True})
    async with client.stream('POST', url + path, json=body) as r:
        assert r.status_code == 200, await r.aread()
        lines = [line async for line in r.aiter_lines() if line]
    assert lines[-1] == 'data: [DONE]' and lines.count('data: [DONE]') == 1
    chunks = [json.loads(line[len('data: '):]) for line in lines[:-1]]
    assert all(line.startswith('data: ') for line in lines) and not any('error' in c for c in chunks)
    finished = [c['choices'][0]['index'] for c in chunks if c['choices'] and c['choices'][0]['finish_reason']]
    assert sorted(finished) == list(range(n))  # each choice finishes exactly once
    assert chunks[-1]['choices'] == [] and chunks[-1]['usage']['completion_tokens'] >= n
    return chunks[-1]['usage']['completion_tokens']


async def wave(url: str) -> list[int]:
    sdk = openai.AsyncOpenAI(base_url=url, api_key='none', max_retries=0, timeout=120)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=120, limits=limits) as raw:
        try:
            jobs = [sdk_stream(sdk, i) if i % 2 else sse_stream(raw, url, i) for i in range(CLIENTS)]
            return await asyncio.gather(*jobs)
        finally:
            await sdk.close()


def rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def test_64_concurrent_streams_twice_with_bounded_memory(loaded_server):
    handle, recorder = loaded_server
    first = asyncio.run(wave(handle.url))
    after_first = rss_mib()
    second = asyncio.run(wave(handle.url))
    after_second = rss_mib()
    assert len(first) == len(second) == CLIENTS and all(t > 0 for t in first + second)
    # the load really queued up (a paused batch's rows are counted again in the batch they go on in)
    assert sum(recorder.batches) >= 2 * ROWS and max(recorder.batches) == 16
    state = health(handle)
    assert state['status'] == 'ok' and state['in_flight'] == 0
    growth = after_second - after_first
    assert growth < GROWTH_BOUND_MIB, f'RSS grew {growth:.1f} MiB in the second wave of {CLIENTS} streams'
