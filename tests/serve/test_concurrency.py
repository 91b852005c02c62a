"""Concurrency: 429 beyond --max_concurrency, slots freed when a client goes away, requests waiting together batched,
requests joining a running batch (continuous batching), and a small load of concurrent streams that all end with
[DONE] (tests/serve/test_load.py has the big one)."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from .helpers import MODEL, GatedEngine, client_for, health, wait_for

HI = [{'role': 'user', 'content': 'Last letter: abcd'}]


@pytest.fixture
def gated(engine, request):
    """A server whose engine holds every batch until the test opens the gate (``admit_after``: the test's param)."""
    from lmforge.serve import create_app, start_server

    gated_engine = GatedEngine(engine)
    app = create_app(gated_engine, served_model_name=MODEL, max_concurrency=4,
                     admit_after=getattr(request, 'param', 16))
    handle = start_server(app)
    yield handle, gated_engine, app.state.lmforge
    gated_engine.gate.set()
    handle.stop()


def in_background(fn):
    out = {}

    def run():
        try:
            out['result'] = fn()
        except Exception as e:  # surfaced by the test's asserts
            out['error'] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_429_beyond_max_concurrency(gated):
    handle, engine, state = gated
    client = client_for(handle)
    threads = [in_background(lambda: client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3))
               for _ in range(4)]
    wait_for(lambda: health(handle)['in_flight'] == 4, what='4 requests in flight')
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
    assert info.value.body['code'] == 'too_many_requests' and info.value.response.headers['retry-after'] == '1'
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model=MODEL, input='x')
    engine.gate.set()
    for thread, out in threads:
        thread.join(30)
        assert 'error' not in out and out['result'].usage.completion_tokens == 3
    assert health(handle)['in_flight'] == 0


def test_waiting_requests_are_batched(gated):
    handle, engine, state = gated
    client = client_for(handle)
    first = in_background(lambda: client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4))
    assert engine.entered.wait(15)  # the first batch holds the engine
    rest = [in_background(lambda: client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4))
            for _ in range(3)]
    wait_for(lambda: state.worker.queued_rows == 3, what='3 queued rows')
    engine.gate.set()
    answers = []
    for thread, out in [first, *rest]:
        thread.join(30)
        answers.append(out['result'].choices[0].message.content)
    assert engine.batches == [1, 3]
    assert len(set(answers)) == 1  # greedy: the same answer alone or in a left-padded batch


@pytest.mark.parametrize('gated', [2], indirect=True)
def test_requests_join_a_running_batch(gated):
    """Continuous batching: a request and an embedding that arrive while a long answer generates do not wait for
    it to end: the batch pauses after ``admit_after`` steps (and once that is affordable: a short prompt's prefill
    is soon paid back), the embedding runs, the request joins the batch, and the long answer is what it is alone."""
    handle, engine, state = gated
    client = client_for(handle)
    eot = engine.tokenizer.convert_tokens_to_ids('<|im_end|>')
    long = dict(model=MODEL, messages=HI, max_tokens=120, presence_penalty=1.5, logit_bias={str(eot): -100})
    first = in_background(lambda: client.chat.completions.create(**long))
    assert engine.entered.wait(15)  # the first batch holds the engine
    short = in_background(lambda: client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3))
    wait_for(lambda: state.worker.queued_rows == 1, what='the short request queued')
    embedding = in_background(lambda: client.embeddings.create(model=MODEL, input='hello'))
    wait_for(lambda: len(state.worker._queue) == 2, what='the embedding queued')
    engine.gate.set()
    for thread, out in (first, short, embedding):
        thread.join(30)
        assert 'error' not in out, out
    assert engine.events == ['generate 1', 'embed', 'generate 2']  # paused once; then the short one joined
    assert short[1]['result'].usage.completion_tokens == 3
    answer = first[1]['result'].choices[0]
    assert answer.finish_reason == 'length' and first[1]['result'].usage.completion_tokens == 120
    assert client.chat.completions.create(**long).choices[0].message.content == answer.message.content
    assert engine.events[-1] == 'generate 1'


def test_a_client_that_goes_away_frees_its_slot(gated):
    handle, engine, state = gated
    body = {'model': MODEL, 'messages': HI, 'max_tokens': 50, 'stream': True}
    with httpx.stream('POST', handle.url + '/chat/completions', json=body, timeout=30) as r:
        lines = r.iter_lines()  # kept: a dropped iterator would close the response at once
        first = next(lines)  # the role chunk comes before any token
        assert first.startswith('data: ') and json.loads(first[6:])['choices'][0]['delta']['role'] == 'assistant'
        assert health(handle)['in_flight'] == 1
    wait_for(lambda: health(handle)['in_flight'] == 0, what='the slot to be freed')
    engine.gate.set()
    wait_for(lambda: not state.generations, what='the abandoned generation to stop')


def test_concurrent_streams(server):
    """16 streaming clients at once: no errors, every stream has its finish chunk and ends with [DONE]."""
    def one(i: int):
        body = {'model': MODEL, 'messages': [{'role': 'user', 'content': f'Last letter: {"abcdefgh"[:i % 8 + 1]}'}],
                'max_tokens': 8 + i % 5, 'stream': True, 'stream_options': {'include_usage': True}}
        with httpx.stream('POST', server.url + '/chat/completions', json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == 'data: [DONE]'
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert not any('error' in c for c in chunks)
        finishes = [c['choices'][0]['finish_reason'] for c in chunks if c['choices']]
        assert finishes[-1] == 'length' and finishes.count('length') == 1
        assert chunks[-1]['usage']['completion_tokens'] == 8 + i % 5
        return True

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(16)))
    assert health(server)['in_flight'] == 0


class FailingEngine:
    """The real engine, except that the first batch fails: the server's own fault."""

    def __init__(self, engine):
        self._engine = engine
        self.failures = 1

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate_rows(self, rows, adapter=None, **kwargs):
        if self.failures:
            self.failures -= 1
            for row in rows:
                row.fail('RuntimeError: out of memory')
            raise RuntimeError('out of memory')
        return self._engine.generate_rows(rows, adapter, **kwargs)


def test_an_engine_failure_is_a_500_and_the_server_goes_on(engine):
    from lmforge.serve import create_app, start_server

    failing = FailingEngine(engine)
    with start_server(create_app(failing, served_model_name=MODEL)) as handle:
        client = client_for(handle)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
        assert 'out of memory' in info.value.body['message']
        failing.failures = 1
        body = {'model': MODEL, 'messages': HI, 'max_tokens': 3, 'stream': True}
        with httpx.stream('POST', handle.url + '/chat/completions', json=body, timeout=30) as r:
            lines = [line for line in r.iter_lines() if line]
        assert 'out of memory' in json.loads(lines[-2][6:])['error']['message'] and lines[-1] == 'data: [DONE]'
        assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3).usage.completion_tokens == 3
        assert health(handle)['in_flight'] == 0
