"""The OpenAI API's request bodies (what lmforge reads of them) and its error shape.

Bodies are checked in two steps: their shape by pydantic (a missing field or a wrong type -> 422), then their values
by the endpoints (out of range, unsupported, too long -> 400). Fields lmforge does not know are accepted and ignored,
as OpenAI-compatible servers do (clients send ``user``, ``metadata``, ``store``...).
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {400: 'invalid_request_error', 401: 'authentication_error', 403: 'permission_error',
             404: 'not_found_error', 413: 'invalid_request_error', 422: 'invalid_request_error',
             429: 'rate_limit_error', 500: 'internal_server_error', 503: 'service_unavailable'}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {'error': {'message': message, 'type': ApiError.TYPES.get(status, 'invalid_request_error'),
                      'param': param, 'code': code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra='allow')


class ContentPart(_Body):
    type: str
    text: Optional[str] = None


class ChatMessage(_Body):
    role: str
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: Optional[str] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None  # not in OpenAI's API; vLLM's extra
    repetition_penalty: Optional[float] = None  # idem
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict[str, float]] = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    tools: Optional[list[dict]] = None
    tool_choice: Union[str, dict, None] = None
    response_format: Optional[dict] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    echo: bool = False
    logprobs: Optional[int] = None
    best_of: Optional[int] = None
    suffix: Optional[str] = None


class EmbeddingRequest(_Body):
    model: Optional[str] = None
    input: Union[str, list[int], list[str], list[list[int]]]
    encoding_format: Literal['float', 'base64'] = 'float'
    dimensions: Optional[int] = None
    pooling: Optional[Literal['mean', 'last']] = None  # lmforge's extra: the server's --embedding_pooling otherwise


def validation_error(exc) -> ApiError:
    """A pydantic ValidationError -> 422 naming the first offending field."""
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    loc = '.'.join(str(p) for p in first.get('loc', ()) if not _is_union_branch(p))
    message = first.get('msg', 'invalid request body')
    return ApiError(422, f'{loc}: {message}' if loc else message, param=loc or None, code='invalid_type')


def _is_union_branch(part) -> bool:
    # pydantic names the branch of a Union it tried ("str", "list[int]", "function-after[...]") in the location
    return isinstance(part, str) and ('[' in part or part in ('str', 'int', 'float', 'bool', 'dict', 'list'))
