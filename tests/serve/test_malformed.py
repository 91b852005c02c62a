"""Malformed requests, sent raw (what the openai SDK would refuse to send): each gets an OpenAI-shaped 4xx naming the
field, never a 500; valid requests OpenAI accepts are accepted; clients that go away do not hold the engine."""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from .helpers import MODEL, GatedEngine, health, wait_for

HI = [{'role': 'user', 'content': 'hi'}]
TOOL = {'type': 'function', 'function': {'name': 'f', 'parameters': {'type': 'object'}}}


def nested(depth: int):
    value = {}
    for _ in range(depth - 1):
        value = {'a': value}
    return value


def call_history(arguments) -> list:
    return [*HI, {'role': 'assistant', 'content': None,
                  'tool_calls': [{'id': 'c1', 'type': 'function', 'function': {'name': 'f', 'arguments': arguments}}]},
            {'role': 'tool', 'tool_call_id': 'c1', 'content': 'ok'}]


@pytest.fixture(scope='module')
def base(engine):
    from lmforge.serve import create_app, start_server

    handle = start_server(create_app(engine, served_model_name=MODEL))
    yield handle.base_url
    handle.stop()


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ['error'] and set(body['error']) == {'message', 'type', 'param', 'code'}, body
    return body['error']


def chat(**kw) -> tuple:
    return '/v1/chat/completions', {'model': MODEL, 'messages': HI, 'max_tokens': 2, **kw}


def completion(**kw) -> tuple:
    return '/v1/completions', {'model': MODEL, 'prompt': 'hi', 'max_tokens': 2, **kw}


def embedding(**kw) -> tuple:
    return '/v1/embeddings', {'model': MODEL, 'input': 'hi', **kw}


@pytest.mark.parametrize('request_, status, param', [
    # fixed: each was a 500, or accepted and silently rendered/ignored
    (chat(logit_bias={'\u00b2': 1}), 400, 'logit_bias'),  # "²".isdigit(), int("²") fails
    (chat(logit_bias={'9' * 5000: 1}), 400, 'logit_bias'),  # int() of > 4300 digits fails
    (chat(logit_bias={'\uff15': 1}), 400, 'logit_bias'),  # a full-width digit was taken as token 5
    (chat(messages=[{'role': 'user', 'content': []}]), 400, 'messages.0.content'),
    (chat(messages=[*HI, {'role': 'tool', 'content': 'x'}]), 400, 'messages.1.tool_call_id'),
    (chat(messages=call_history('{not json')), 400, 'messages.1.tool_calls.0.function.arguments'),
    (chat(messages=call_history('[1, 2]')), 400, 'messages.1.tool_calls.0.function.arguments'),
    (chat(messages=call_history(5)), 400, 'messages.1.tool_calls.0.function.arguments'),
    (chat(messages=call_history(nested(100))), 400, 'messages.1.tool_calls.0.function.arguments'),
    (chat(tools=[{'type': 'function', 'function': {'name': 'f', 'parameters': 5}}]), 400,
     'tools.0.function.parameters'),
    (chat(tools=[{'type': 'function', 'function': {'name': ''}}]), 400, 'tools.0.function.name'),
    (chat(tools=[{'type': 'function', 'function': {'name': 'f', 'parameters': nested(100)}}]), 400, 'tools.0'),
    (chat(tools=[TOOL], tool_choice={'type': 'function', 'function': {'name': 'nope'}}), 400, 'tool_choice'),
    (chat(stream_options={'include_usage': True}), 400, 'stream_options'),
    (completion(stream_options={'include_usage': True}), 400, 'stream_options'),
    (completion(prompt=['x'] * 2049), 400, 'prompt'),
    (completion(prompt=['x'] * 17, n=128), 400, 'n'),
    (embedding(input=['x'] * 2049), 400, 'input'),
    # already answered well: kept so
    (chat(messages=[]), 400, 'messages'),
    (chat(messages=[{'content': 'hi'}]), 422, 'messages.0.role'),
    (chat(messages=[{'role': 'user', 'content': 5}]), 422, 'messages.0.content'),
    (chat(messages=[{'role': 'user', 'content': [{'type': 'image_url', 'image_url': {'url': 'x'}}]}]), 400,
     'messages.0.content.0'),
    (chat(n=1000), 400, 'n'),
    (chat(max_tokens=-1), 400, 'max_tokens'),
    (chat(max_tokens=2 ** 40), 400, 'max_tokens'),
    (chat(max_tokens=2.5), 422, 'max_tokens'),
    (chat(temperature=-1), 400, 'temperature'),
    (chat(temperature='hot'), 422, 'temperature'),
    (chat(top_p=2), 400, 'top_p'),
    (chat(logprobs=True, top_logprobs=50), 400, 'top_logprobs'),
    (chat(stop=5), 422, 'stop'),
    (chat(stop=[str(i) for i in range(17)]), 400, 'stop'),
    (chat(seed=1.5), 422, 'seed'),
    (chat(seed=2 ** 70), 400, 'seed'),
    (chat(logit_bias={'abc': 1}), 400, 'logit_bias'),
    (chat(logit_bias={'5': 200}), 400, 'logit_bias'),
    (chat(presence_penalty=5), 400, 'presence_penalty'),
    (chat(model='no-such-adapter'), 404, 'model'),
    (completion(prompt=[[]]), 400, 'prompt'),
    (completion(prompt=[-1]), 400, 'prompt'),
    (completion(logprobs=100), 400, 'logprobs'),
    (embedding(input=[]), 400, 'input'),
    (embedding(input=[[]]), 400, 'input'),
])
def test_malformed_requests(base, request_, status, param):
    path, body = request_
    assert error_of(httpx.post(base + path, json=body, timeout=30), status)['param'] == param


@pytest.mark.parametrize('request_', [
    chat(n=128, max_tokens=1),  # OpenAI's limits: n up to 128, temperature up to 2
    chat(temperature=2, seed=3),
    chat(stop=''),
    chat(tool_choice='none'),
    chat(messages=[{'role': 'user', 'content': 'a\x00b'}]),
    chat(stream=True, n=2, logprobs=True, top_logprobs=2, stream_options={'include_usage': True}),
    completion(prompt=[[5, 6], [7]], echo=True, max_tokens=0, logprobs=1),
    embedding(input=[5, 6]),
])
def test_valid_edge_requests_are_served(base, request_):
    path, body = request_
    r = httpx.post(base + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    if body.get('stream'):
        assert r.text.endswith('data: [DONE]\n\n') and '"error"' not in r.text
    elif path == '/v1/chat/completions':
        assert len(r.json()['choices']) == body.get('n', 1)


@pytest.mark.parametrize('path, raw, param', [
    ('/v1/chat/completions', b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     'messages.0.content'),
    ('/v1/completions', b'{"prompt": ["ok", "\\uDFFF"]}', 'prompt.1'),
    ('/v1/embeddings', b'{"input": "\\udc00"}', 'input'),
    ('/v1/chat/completions', b'{"model": "\\ud800", "messages": []}', 'model'),
])
def test_lone_surrogates_are_400(base, path, raw, param):
    """A lone surrogate escape decodes to a str no tokenizer (nor JSON encoder) takes: it was a 500."""
    r = httpx.post(base + path, content=raw, headers={'content-type': 'application/json'}, timeout=30)
    assert error_of(r, 400)['param'] == param


def test_bodies_that_are_not_json_objects(base):
    url = base + '/v1/chat/completions'
    r = httpx.post(url, content=b'{"x": ' + b'[' * 100000 + b']' * 100000 + b'}', timeout=30)  # was a 500
    assert error_of(r, 400)['code'] == 'invalid_json'
    r = httpx.post(url, content=b'messages=hi', headers={'content-type': 'application/x-www-form-urlencoded'})
    assert 'application/json' in error_of(r, 400)['message']
    for raw in (b'', b'[1, 2]', b'null', b'\xff\xfe'):
        assert error_of(httpx.post(url, content=raw, timeout=30), 400)['code'] == 'invalid_json'
    assert error_of(httpx.get(url, timeout=30), 405)['param'] is None
    pair = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 1}'  # one character
    assert httpx.post(url, content=pair, headers={'content-type': 'application/json'}, timeout=30).status_code == 200


@pytest.fixture(scope='module')
def auth_base(engine):
    from lmforge.serve import create_app, start_server

    handle = start_server(create_app(engine, served_model_name=MODEL, api_key='k3y', jwt_secret='jwt-secret'))
    yield handle.base_url
    handle.stop()


@pytest.mark.parametrize('header, status, says', [
    (None, 401, 'Missing API key'),
    ('k3y', 401, 'Malformed'),  # no scheme
    ('Bearer', 401, 'Malformed'),  # no key
    ('Basic k3y', 401, 'Malformed'),
    ('Bearer nope', 401, 'Invalid token'),
    (b'Bearer \xff\xfe', 401, 'Invalid token'),  # not UTF-8: was a 500 in the JWT check
    ('bearer k3y', 200, None),  # the scheme is case-insensitive (RFC 7235)
    ('Bearer k3y', 200, None),
])
def test_authorization_header_edge_cases(auth_base, header, status, says):
    headers = {} if header is None else {'Authorization': header}
    r = httpx.get(auth_base + '/v1/models', headers=headers, timeout=30)
    if status == 200:
        assert r.status_code == 200, r.text
    else:
        error = error_of(r, 401)
        assert error['code'] == 'invalid_api_key' and says in error['message'], error
        assert r.headers['www-authenticate'] == 'Bearer'
    assert error_of(httpx.get(auth_base + '/v1x', timeout=30), 404)  # not an API path: no auth asked


def test_a_client_gone_mid_stream_leaves_the_server_serving(base):
    body = {'model': MODEL, 'messages': HI, 'max_tokens': 200, 'stream': True}
    with httpx.stream('POST', base + '/v1/chat/completions', json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith('data: ')
    wait_for(lambda: httpx.get(base + '/health').json()['in_flight'] == 0, what='the slot to be freed')
    r = httpx.post(base + '/v1/chat/completions', json={'model': MODEL, 'messages': HI, 'max_tokens': 3}, timeout=30)
    assert r.status_code == 200 and r.json()['usage']['completion_tokens'] == 3


def test_a_client_gone_before_a_plain_answer_cancels_it(engine):
    """A non-streamed answer nobody will read is cancelled (it held its slot and the engine until max_tokens)."""
    from lmforge.serve import create_app, start_server

    gated = GatedEngine(engine)
    app = create_app(gated, served_model_name=MODEL)
    handle = start_server(app)
    try:
        body = json.dumps({'model': MODEL, 'messages': HI, 'max_tokens': 500}).encode()
        with socket.create_connection((handle.host, handle.port)) as sock:
            sock.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                         b'Content-Length: %d\r\n\r\n%s' % (len(body), body))
            assert gated.entered.wait(15)
            (generation,) = app.state.lmforge.generations
        wait_for(lambda: generation.rows[0].cancelled, what='the answer to be cancelled')
        gated.gate.set()
        wait_for(lambda: health(handle)['in_flight'] == 0, what='the slot to be freed')
        assert generation.rows[0].finish_reason == 'abort' and len(generation.rows[0].token_ids) < 500
    finally:
        gated.gate.set()
        handle.stop()


def test_long_stop_strings_stay_cheap(engine):
    """Holding back a tail that could start a stop string tried every tail length per token (O(text^2) each):
    16 stop strings of 50k characters took seconds for 3000 tokens, with the engine's thread blocked."""
    import random

    from lmforge.infer.engine import RequestConfig
    from lmforge.infer.sequence import Sequence

    rng = random.Random(0)
    for _ in range(2000):  # the same answer as trying every tail
        stops = [''.join(rng.choice('abc') for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 3))]
        seq = Sequence([1], RequestConfig(stop=stops), engine.tokenizer, [])
        seq._full = ''.join(rng.choice('ab') for _ in range(rng.randint(0, 10)))
        expected = max(max((k for k in range(min(len(s) - 1, len(seq._full)) + 1) if seq._full.endswith(s[:k])),
                           default=0) for s in stops)
        assert seq._held_back() == expected, (seq._full, stops)
    seq = Sequence([1], RequestConfig(max_new_tokens=10 ** 6, stop=['\x07' * 50000] * 16), engine.tokenizer, [])
    start = time.perf_counter()
    for _ in range(3000):
        seq.push(rng.randrange(3, 300))
    assert time.perf_counter() - start < 3 and not seq.done
