"""The OpenAI-compatible HTTP API over an engine: FastAPI routes, auth, limits and errors.

    app = create_app(PtEngine(model_dir), served_model_name='my-model', api_key='secret')

Routes: GET /health, GET /v1/models[/{id}], POST /v1/chat/completions, /v1/completions, /v1/embeddings. Generation
runs on the engine's own thread (`EngineWorker`), which batches requests that wait together; the event loop only
moves text. Every error has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for values the
model cannot serve (a prompt over the context, an unsupported option), 401 without the right Bearer key, 404 for an
unknown model, 413 for a body over --max_request_bytes, 422 for a body of the wrong shape, 429 beyond
--max_concurrency, 503 while shutting down; a 500 only for a fault of the server itself.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.serve.chat import chat
from lmforge.serve.completions import complete
from lmforge.serve.embeddings import embed
from lmforge.serve.protocol import (ApiError, ChatCompletionRequest, CompletionRequest, EmbeddingRequest,
                                    error_body, validation_error)
from lmforge.serve.worker import EngineWorker


def create_app(engine, served_model_name: str | None = None, api_key: str | None = None, max_concurrency: int = 64,
               max_batch_size: int = 16, max_request_bytes: int = 4 << 20, defaults=None,
               max_model_len: int | None = None, embedding_pooling: str = 'mean',
               jwt_secret: str | None = None, admit_after: int = 16) -> FastAPI:
    """An OpenAI-compatible API over ``engine``.

    served_model_name: the name clients pass as ``model`` (default: the model directory's name); the engine's named
        adapters are served under their own names.
    api_key: when set, /v1/* requires ``Authorization: Bearer <api_key>``.
    jwt_secret: when set, a Bearer JWT signed with it (HS256, with an ``exp`` claim) is accepted too.
    max_concurrency: requests generating or waiting at once; more get 429.
    max_batch_size: rows generated together in one batch.
    admit_after: continuous batching: requests arriving while a batch generates join it after this many steps
        (0: they wait for the batch to end). See `EngineWorker`.
    max_request_bytes: largest request body accepted (413 beyond).
    defaults: a `RequestConfig` whose values apply where a request sets none (max_tokens, temperature, top_p, top_k,
        repetition_penalty, stop).
    max_model_len: the context length requests must fit (default: the model's max_position_embeddings).
    embedding_pooling: mean | last, for /v1/embeddings.
    """
    from lmforge.infer.engine import RequestConfig

    state = ServerState(engine, served_model_name or _default_name(engine), api_key, max_concurrency,
                        max_batch_size, max_request_bytes, defaults or RequestConfig(),
                        max_model_len or getattr(engine, 'max_model_len', None), embedding_pooling, admit_after)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        state.worker.start()
        yield
        state.cancel_all()
        await run_in_threadpool(state.worker.stop)

    app = FastAPI(title='lmforge', lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lmforge = state
    state.worker.start()
    _install_errors(app)
    app.add_middleware(AuthMiddleware, api_key=api_key, jwt_secret=jwt_secret)

    @app.get('/health')
    async def health():
        ok = state.worker.alive
        return JSONResponse({'status': 'ok' if ok else 'unavailable', 'model': state.name,
                             'in_flight': state.in_flight, 'max_concurrency': state.max_concurrency},
                            status_code=200 if ok else 503)

    @app.get('/v1/models')
    async def list_models():
        return {'object': 'list', 'data': [state.model_card(m) for m in state.model_names]}

    @app.get('/v1/models/{model_id:path}')
    async def get_model(model_id: str):
        state.resolve_model(model_id)
        return state.model_card(model_id)

    @app.post('/v1/chat/completions')
    async def chat_completions(request: Request):
        req = _parse(ChatCompletionRequest, await read_json(request, state.max_request_bytes))
        return await chat(state, req, request)

    @app.post('/v1/completions')
    async def completions(request: Request):
        req = _parse(CompletionRequest, await read_json(request, state.max_request_bytes))
        return await complete(state, req, request)

    @app.post('/v1/embeddings')
    async def embeddings(request: Request):
        req = _parse(EmbeddingRequest, await read_json(request, state.max_request_bytes))
        return await embed(state, req)

    return app


def _default_name(engine) -> str:
    bundle = getattr(engine, 'bundle', None)
    return os.path.basename(os.path.normpath(bundle.base_dir)) if bundle else 'lmforge'


class ServerState:
    """What the routes share: the engine and its worker, names, limits and request defaults."""

    def __init__(self, engine, name, api_key, max_concurrency, max_batch_size, max_request_bytes, defaults,
                 max_model_len, embedding_pooling, admit_after=16):
        self.engine = engine
        self.name = name
        self.adapters = list(getattr(engine, 'adapter_names', []) or [])
        if name in self.adapters:
            raise ValueError(f'served_model_name {name!r} is also the name of an adapter; choose another')
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.max_batch_size = max_batch_size
        self.max_request_bytes = max_request_bytes
        self.defaults = defaults
        self.max_model_len = max_model_len
        self.embedding_pooling = embedding_pooling
        self.worker = EngineWorker(engine, max_batch_size, admit_after)
        self.in_flight = 0
        self.created = int(time.time())
        self.generations: set = set()

    @property
    def model_names(self) -> list[str]:
        return [self.name] + self.adapters

    def model_card(self, model_id: str) -> dict:
        card = {'id': model_id, 'object': 'model', 'created': self.created, 'owned_by': 'lmforge',
                'root': model_id, 'parent': None if model_id == self.name else self.name}
        if self.max_model_len:
            card['max_model_len'] = self.max_model_len
        return card

    def resolve_model(self, model: str | None) -> tuple[str, str | None]:
        """(the name to echo, the adapter to use) for a request's ``model``; 404 for a name not served."""
        if model is None or model == self.name:
            return self.name, None
        if model in self.adapters:
            return model, model
        raise ApiError(404, f'The model `{model}` does not exist. Served here: {", ".join(self.model_names)}.',
                       param='model', code='model_not_found')

    def acquire(self) -> 'Slot':
        if self.in_flight >= self.max_concurrency:
            raise ApiError(429, f'The server is at its limit of {self.max_concurrency} concurrent requests '
                                '(--max_concurrency); retry later.', code='too_many_requests',
                           headers={'Retry-After': '1'})
        self.in_flight += 1
        return Slot(self)

    def cancel_all(self) -> None:
        for gen in list(self.generations):
            gen.cancel()


class Slot:
    """One of --max_concurrency; released exactly once, however the request ends."""

    def __init__(self, state: ServerState):
        self.state = state
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.in_flight -= 1


class AuthMiddleware:
    """Bearer auth on /v1/* when an API key (constant-time comparison) and/or a JWT secret is set: a request passes
    with the key, or with a JWT signed by the secret (HS256, expiry checked, through PyJWT)."""

    def __init__(self, app, api_key: str | None = None, jwt_secret: str | None = None):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.jwt_secret = jwt_secret

    def _reject(self, header: bytes) -> str | None:
        """Why a request with this Authorization header is refused, or None."""
        if not header.strip():
            return 'Missing API key: send the header "Authorization: Bearer <key>".'
        parts = header.split(None, 1)
        if len(parts) != 2 or parts[0].lower() != b'bearer':  # "<key>", "Basic ...", "Bearer" alone
            return 'Malformed Authorization header: send "Authorization: Bearer <key>".'
        token = parts[1].strip()
        if self.api_key and hmac.compare_digest(token, self.api_key):
            return None
        if self.jwt_secret:
            import jwt
            try:
                jwt.decode(token.decode('latin-1'), self.jwt_secret, algorithms=['HS256'],
                           options={'require': ['exp']})
                return None
            except jwt.PyJWTError as e:
                return f'Invalid token: {e}.'
        return 'Incorrect API key provided.'

    async def __call__(self, scope, receive, send):
        if (self.api_key or self.jwt_secret) and scope['type'] == 'http' and (scope['path'] + '/').startswith('/v1/'):
            header = dict(scope.get('headers') or []).get(b'authorization', b'')
            message = self._reject(header)
            if message:
                response = JSONResponse(error_body(401, message, code='invalid_api_key'), status_code=401,
                                        headers={'WWW-Authenticate': 'Bearer'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        message = f'{exc.detail}: {request.method} {request.url.path}'
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, 'headers', None))

    @app.exception_handler(Exception)
    async def server_error(_request, exc: Exception):
        return JSONResponse(error_body(500, f'internal server error: {type(exc).__name__}: {exc}'), status_code=500)


async def read_json(request: Request, limit: int) -> dict:
    """The request body as a JSON object, read up to ``limit`` bytes."""
    length = request.headers.get('content-length')
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f'The request body is {length} bytes; this server accepts at most {limit} '
                            '(--max_request_bytes).', code='request_too_large')
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f'The request body is over {limit} bytes (--max_request_bytes).',
                           code='request_too_large')
        chunks.append(chunk)
    body = b''.join(chunks)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        kind = request.headers.get('content-type', '').split(';')[0].strip()
        hint = f' (it was sent as {kind}; send JSON as application/json)' if kind and 'json' not in kind else ''
        raise ApiError(400, f'The request body is not valid JSON{hint}: {e}', code='invalid_json') from None
    except RecursionError:
        raise ApiError(400, 'The request body is not valid JSON: it is nested too deeply.',
                       code='invalid_json') from None
    if not isinstance(data, dict):
        raise ApiError(400, 'The request body must be a JSON object.', code='invalid_json')
    if _SURROGATE_ESCAPE.search(body):  # "\ud800" alone: a str no tokenizer or JSON encoder takes
        where = _lone_surrogate(data)
        if where is not None:
            raise ApiError(400, f'{where}: contains a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), '
                                'which is not a Unicode character.', param=where, code='invalid_value')
    return data


_SURROGATE_ESCAPE = re.compile(rb'\\u[dD][89a-fA-F]')


def _lone_surrogate(data) -> str | None:
    """The path ("messages.0.content") of a string in ``data`` (keys included) with a lone surrogate (JSON
    decodes an escaped pair to one character, so any surrogate left is unpaired), or None."""
    stack = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    return '.'.join(map(str, path + (key,)))
                stack.append((path + (key,), item))
        elif isinstance(value, list):
            stack.extend((path + (i,), item) for i, item in enumerate(value))
        elif isinstance(value, str) and _SURROGATE.search(value):
            return '.'.join(map(str, path)) or None
    return None


_SURROGATE = re.compile('[\ud800-\udfff]')


def _parse(model, data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None
