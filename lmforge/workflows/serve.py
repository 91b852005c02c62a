"""`lmforge serve` / `lmforge deploy`: the OpenAI-compatible server in the foreground."""
from __future__ import annotations

import os
import sys

from lmforge.args.parse import from_kwargs
from lmforge.args.serve import ServeArgs, split_adapters

LOCAL_HOSTS = ('127.0.0.1', 'localhost', '::1')


def serve(config: str | None = None, **kwargs) -> None:
    """Python SDK: ``serve(model=..., port=8000)``; the names of `lmforge serve --help`. Blocks until stopped."""
    run_serve(from_kwargs(ServeArgs, config, **kwargs))


def make_engine(args: ServeArgs):
    """The --infer_backend engine (a missing or unusable one is refused before any model loads)."""
    from lmforge.infer.backends import make_engine as build

    plain, named = split_adapters(args.adapters)
    extra = {} if args.infer_backend == 'pt' else {'max_model_len': args.max_model_len,
                                                     'engine_kwargs': args.engine_kwargs}
    return build(args.infer_backend, model=args.model, adapters=plain, torch_dtype=args.torch_dtype,
                 attn_impl=args.attn_impl, template=args.template, system=args.system, use_hf=args.use_hf,
                 revision=args.model_revision, token=args.hub_token, trust_remote_code=args.trust_remote_code,
                 named_adapters=named, **extra)


def make_app(args: ServeArgs, engine, api_key: str | None):
    from lmforge.infer.engine import RequestConfig
    from lmforge.serve import create_app

    defaults = RequestConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                             top_k=args.top_k, repetition_penalty=args.repetition_penalty, stop=args.stop_words)
    name = args.served_model_name or args.model or os.path.basename(os.path.normpath(engine.bundle.base_dir))
    return create_app(engine, served_model_name=name, api_key=api_key, max_concurrency=args.max_concurrency,
                      max_batch_size=args.max_batch_size, admit_after=args.admit_after,
                      max_request_bytes=args.max_request_bytes,
                      defaults=defaults, max_model_len=args.max_model_len,
                      embedding_pooling=args.embedding_pooling,
                      jwt_secret=args.jwt_secret or os.environ.get('LMFORGE_JWT_SECRET') or None), name


def run_serve(args: ServeArgs) -> None:
    from lmforge.infer.backends import check_backend
    from lmforge.serve.server import bind_socket, make_server, url_of

    check_backend(args.infer_backend)  # not installed / no CUDA: said before anything else happens
    api_key = args.api_key or os.environ.get('LMFORGE_API_KEY') or None
    sock = bind_socket(args.host, args.port)  # before loading the model: a busy port fails fast
    port = sock.getsockname()[1]
    engine = make_engine(args)
    app, name = make_app(args, engine, api_key)
    url = url_of('127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host, port)
    adapters = getattr(engine, 'adapter_names', [])
    print(f'[lmforge] serving {name!r}' + (f' and adapters {", ".join(adapters)}' if adapters else '')
          + f' at {url}/v1 (listening on {args.host}:{port})', flush=True)
    if args.host not in LOCAL_HOSTS and not api_key and not (args.jwt_secret or os.environ.get('LMFORGE_JWT_SECRET')):
        print(f'[lmforge] warning: listening on {args.host} without --api_key: anyone who can reach this port can '
              'use the model', file=sys.stderr, flush=True)
    auth = ' -H "Authorization: Bearer YOUR_API_KEY"' if api_key else ''
    print(f"[lmforge] try: curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
          f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
          flush=True)
    server = make_server(app, args.log_level)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
