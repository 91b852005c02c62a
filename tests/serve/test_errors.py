"""Client mistakes get OpenAI-shaped 4xx errors the SDK maps to its exception classes; auth; limits."""
from __future__ import annotations

import httpx
import openai
import pytest

from .helpers import MODEL, client_for

HI = [{'role': 'user', 'content': 'hi'}]


@pytest.fixture(scope='module')
def strict_server(engine):
    """Auth on, a small body limit and a short context."""
    from lmforge.serve import create_app, start_server

    handle = start_server(create_app(engine, served_model_name=MODEL, api_key='s3cret', max_request_bytes=4096,
                                     max_model_len=64))
    yield handle
    handle.stop()


def error_of(exc_info) -> dict:
    body = exc_info.value.body
    assert set(body) == {'message', 'type', 'param', 'code'}, body  # the SDK unwraps {"error": {...}}
    return body


@pytest.mark.parametrize('kwargs, exc, param', [
    (dict(model='no-such-model'), openai.NotFoundError, 'model'),
    (dict(messages=[]), openai.BadRequestError, 'messages'),
    (dict(temperature=5), openai.BadRequestError, 'temperature'),
    (dict(top_p=0), openai.BadRequestError, 'top_p'),
    (dict(n=0), openai.BadRequestError, 'n'),
    (dict(max_tokens=0), openai.BadRequestError, 'max_tokens'),
    (dict(top_logprobs=2), openai.BadRequestError, 'top_logprobs'),
    (dict(logit_bias={'999999': 1}), openai.BadRequestError, 'logit_bias'),
    (dict(messages=[{'role': 'wizard', 'content': 'hi'}]), openai.BadRequestError, 'messages.0.role'),
    (dict(messages=[{'role': 'user', 'content': [{'type': 'image_url', 'image_url': {'url': 'x'}}]}]),
     openai.BadRequestError, 'messages.0.content.0'),
    (dict(tool_choice='required', tools=[{'type': 'function', 'function': {'name': 'f'}}]),
     openai.BadRequestError, 'tool_choice'),
    (dict(tools=[{'type': 'function', 'function': {'name': 'f'}}]), openai.BadRequestError, 'messages'),
    (dict(response_format={'type': 'json_object'}), openai.BadRequestError, 'response_format'),
    (dict(messages=[{'content': 'no role'}]), openai.UnprocessableEntityError, 'messages.0.role'),
    (dict(messages='not a list'), openai.UnprocessableEntityError, 'messages'),
    (dict(max_tokens='many'), openai.UnprocessableEntityError, 'max_tokens'),
])
def test_bad_chat_requests(client, kwargs, exc, param):
    args = dict(model=MODEL, messages=HI, max_tokens=4)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        client.chat.completions.create(**args)
    assert error_of(info)['param'] == param


def test_bad_completion_and_embedding_requests(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=[10**9], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt='x', max_tokens=2, suffix='y')
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model='nope', input='x')
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input='x', dimensions=3)


def test_invalid_json_and_unknown_route(server):
    r = httpx.post(server.url + '/chat/completions', content=b'{not json', timeout=10)
    assert r.status_code == 400 and r.json()['error']['code'] == 'invalid_json'
    r = httpx.post(server.url + '/chat/completions', json=[1, 2], timeout=10)
    assert r.status_code == 400
    r = httpx.get(server.url + '/nothing-here', timeout=10)
    assert r.status_code == 404 and set(r.json()['error']) == {'message', 'type', 'param', 'code'}


def test_prompt_longer_than_the_context(strict_server):
    client = client_for(strict_server, api_key='s3cret')
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': 'abc ' * 40}])
    body = error_of(info)
    assert '64 tokens' in body['message'] and body['code'] == 'context_length_exceeded'
    with pytest.raises(openai.BadRequestError) as info:  # fits alone, not with the completion asked for
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=60)
    message = error_of(info)['message']
    assert '64 tokens' in message and 'in the completion' in message
    # without max_tokens, the answer is cut to what the context leaves: finish_reason length, no error
    r = client.chat.completions.create(model=MODEL, messages=HI)
    assert r.choices[0].finish_reason == 'length' and r.usage.total_tokens == 64


def test_auth(strict_server):
    with pytest.raises(openai.AuthenticationError) as info:  # wrong key
        client_for(strict_server, api_key='wrong').models.list()
    assert error_of(info)['code'] == 'invalid_api_key'
    with pytest.raises(openai.AuthenticationError) as info:  # no key: the SDK sends no Authorization header
        client_for(strict_server, api_key='unused').chat.completions.create(
            model=MODEL, messages=HI, max_tokens=2, extra_headers={'Authorization': openai.omit})
    assert error_of(info)['message'].startswith('Missing API key')
    r = httpx.post(strict_server.url + '/chat/completions', json={'model': MODEL, 'messages': HI}, timeout=10)
    assert r.status_code == 401 and r.headers['www-authenticate'] == 'Bearer'
    assert httpx.get(strict_server.base_url + '/health', timeout=10).status_code == 200  # /health stays open
    ok = client_for(strict_server, api_key='s3cret')
    assert ok.chat.completions.create(model=MODEL, messages=HI, max_tokens=2).usage.completion_tokens == 2


def test_jwt_auth(engine):
    import time

    import jwt

    from lmforge.serve import create_app, start_server

    handle = start_server(create_app(engine, served_model_name=MODEL, jwt_secret='jwt-secret'))
    try:
        good = jwt.encode({'sub': 'alice', 'exp': int(time.time()) + 60}, 'jwt-secret', algorithm='HS256')
        assert client_for(handle, api_key=good).models.list().data[0].id == MODEL
        for token, why in ((jwt.encode({'sub': 'a', 'exp': int(time.time()) - 5}, 'jwt-secret', algorithm='HS256'),
                            'expired'),
                           (jwt.encode({'sub': 'a', 'exp': int(time.time()) + 60}, 'other', algorithm='HS256'),
                            'Signature verification failed'),
                           (jwt.encode({'sub': 'a'}, 'jwt-secret', algorithm='HS256'), 'exp'),
                           ('not-a-jwt', 'Invalid token')):
            with pytest.raises(openai.AuthenticationError) as info:
                client_for(handle, api_key=token).models.list()
            assert why in error_of(info)['message'], error_of(info)
    finally:
        handle.stop()


def test_body_size_limit(strict_server):
    client = client_for(strict_server, api_key='s3cret')
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': 'x' * 5000}])
    assert info.value.status_code == 413 and 'max_request_bytes' in error_of(info)['message']
