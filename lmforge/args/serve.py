"""Arguments of `lmforge serve` (alias `lmforge deploy`)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from lmforge.args.common import GenerationArgs, ModelArgs, TemplateArgs
from lmforge.args.infer import BACKEND_HELP, ENGINE_KWARGS_HELP, INFER_BACKENDS, validate_backend
from lmforge.args.parse import arg
from lmforge.errors import ArgumentError
from lmforge.hub import check_adapter_dir

ADAPTER_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._:/-]*$')


@dataclass
class ServeArgs(GenerationArgs, TemplateArgs, ModelArgs):
    """Serve a model through an OpenAI-compatible HTTP API (chat, completions, embeddings, models).

    The generation flags (--max_new_tokens, --temperature, ...) are the defaults of requests that do not set them.
    Examples: lmforge serve --model output/checkpoint-100
              lmforge serve --model Qwen/Qwen2.5-0.5B-Instruct --adapters math=out/ckpt-50 --api_key secret
    """
    command = 'serve'
    adapters: list[str] = arg(help='LoRA checkpoints: name=DIR is served as model `name` (requests choose it); a '
                                   'plain DIR is applied to --model for every request', factory=list)
    infer_backend: str = arg('pt', BACKEND_HELP, choices=INFER_BACKENDS)
    engine_kwargs: Optional[dict] = arg(None, ENGINE_KWARGS_HELP)
    host: str = arg('127.0.0.1', 'address to listen on; 0.0.0.0 exposes the server to the network')
    port: int = arg(8000, 'port to listen on (0: any free port)')
    api_key: Optional[str] = arg(None, 'require "Authorization: Bearer KEY" on /v1/*; default: the LMFORGE_API_KEY '
                                       'environment variable, else no auth')
    jwt_secret: Optional[str] = arg(None, 'also accept Bearer JWTs signed with this secret (HS256, exp required); '
                                          'default: the LMFORGE_JWT_SECRET environment variable')
    served_model_name: Optional[str] = arg(None, 'the model name clients send; default: --model as given')
    max_concurrency: int = arg(64, 'requests generating or queued at once; more get HTTP 429')
    max_batch_size: int = arg(16, 'rows generated together in one batch')
    admit_after: int = arg(16, 'continuous batching (pt engine): a running batch pauses after this many steps to '
                               'take in waiting requests, when it has room; 0: a batch runs to its end first')
    max_request_bytes: int = arg(4 << 20, 'largest request body accepted (HTTP 413 beyond)')
    max_model_len: Optional[int] = arg(None, "context length requests must fit; default: the model's "
                                             'max_position_embeddings')
    embedding_pooling: str = arg('mean', '/v1/embeddings: mean over the tokens or the last token\'s hidden state',
                                 choices=('mean', 'last'))
    log_level: str = arg('info', 'uvicorn log level', choices=('critical', 'error', 'warning', 'info', 'debug'))

    def validate(self):
        if not self.model and not self.adapters:
            raise ArgumentError('model', 'is required: a model directory, hub id, or a checkpoint')
        if not 0 <= self.port <= 65535:
            raise ArgumentError('port', f'must be in [0, 65535], got {self.port}')
        if self.admit_after < 0:
            raise ArgumentError('admit_after', f'must be >= 0 (0 turns continuous batching off), got {self.admit_after}')
        for name in ('max_concurrency', 'max_batch_size', 'max_request_bytes'):
            if getattr(self, name) <= 0:
                raise ArgumentError(name, f'must be positive, got {getattr(self, name)}')
        if self.max_model_len is not None and self.max_model_len <= 1:
            raise ArgumentError('max_model_len', f'must be at least 2, got {self.max_model_len}')
        if self.api_key is not None and not self.api_key.strip():
            raise ArgumentError('api_key', 'is empty')
        plain, named = split_adapters(self.adapters)
        for path in [*plain, *named.values()]:
            if os.path.isdir(os.path.expanduser(path)):  # a missing one is the engine's to report
                check_adapter_dir(path)
        if not self.model and not plain and not named:
            raise ArgumentError('model', 'is required')
        if self.served_model_name and self.served_model_name in named:
            raise ArgumentError('served_model_name', f'{self.served_model_name!r} is also an adapter name')
        validate_backend(self)
        self.validate_generation()


def split_adapters(adapters: list[str]) -> tuple[list[str], dict[str, str]]:
    """--adapters values -> (plain dirs applied to the model, {name: dir} served by name)."""
    plain, named = [], {}
    for value in adapters:
        name, sep, path = value.partition('=')
        if not sep:
            plain.append(value)
            continue
        if not ADAPTER_NAME.match(name) or not path:
            raise ArgumentError('adapters', f'{value!r}: expected name=DIR with a name of letters, digits and ._:/-')
        if name in named:
            raise ArgumentError('adapters', f'the name {name!r} is given twice')
        named[name] = path
    return plain, named
