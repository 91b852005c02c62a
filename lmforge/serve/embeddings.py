"""POST /v1/embeddings: the model's last hidden state, pooled (mean over the tokens, or the last token)."""
from __future__ import annotations

import base64
import struct
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from lmforge.serve.generation import check, run_call, vocab_size
from lmforge.serve.protocol import ApiError, EmbeddingRequest

if TYPE_CHECKING:
    from lmforge.serve.app import ServerState

MAX_INPUTS = 2048


async def embed(state: ServerState, req: EmbeddingRequest):
    name, adapter = state.resolve_model(req.model)
    engine = state.engine
    items = [req.input] if isinstance(req.input, str) or (req.input and isinstance(req.input[0], int)) \
        else list(req.input)
    check(bool(items), 'input', 'must not be empty')
    check(len(items) <= MAX_INPUTS, 'input', f'at most {MAX_INPUTS} inputs per request (as OpenAI), got {len(items)}')
    hidden = engine.hidden_size
    check(req.dimensions is None or req.dimensions == hidden, 'dimensions',
          f'this model only gives {hidden}-dimensional embeddings')
    vocab = vocab_size(engine)
    inputs = []
    for k, item in enumerate(items):
        if isinstance(item, str):
            check(bool(item), 'input', f'input {k} is an empty string')
            ids = (await run_in_threadpool(engine.tokenizer, item))['input_ids']
        else:
            check(bool(item) and all(0 <= t < vocab for t in item), 'input',
                  f'input {k}: token ids must be in [0, {vocab}) and not empty')
            ids = list(item)
        if state.max_model_len and len(ids) > state.max_model_len:
            raise ApiError(400, f"This model's maximum context length is {state.max_model_len} tokens. However, "
                                f'input {k} resulted in {len(ids)} tokens. Please reduce the length of the input.',
                           param='input', code='context_length_exceeded')
        inputs.append(ids)
    slot = state.acquire()
    try:
        vectors = await run_call(state, engine.embed, inputs, req.pooling or state.embedding_pooling, adapter,
                                 state.max_batch_size)
    finally:
        slot.release()
    data = []
    for k, vector in enumerate(vectors):
        value = vector if req.encoding_format == 'float' else \
            base64.b64encode(struct.pack(f'<{len(vector)}f', *vector)).decode('ascii')
        data.append({'object': 'embedding', 'index': k, 'embedding': value})
    n_tokens = sum(map(len, inputs))
    return {'object': 'list', 'data': data, 'model': name,
            'usage': {'prompt_tokens': n_tokens, 'total_tokens': n_tokens}}
