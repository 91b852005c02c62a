"""A small OpenAI-compatible chat client (standard library only) for custom evaluation sets against --eval_url."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from lmforge.eval.harness import EvalError


class ChatClient:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 600):
        self.base_url = base_url.rstrip('/')
        self.api_key = api_key
        self.timeout = timeout
        self.model = model or self.models()[0]

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {'Content-Type': 'application/json'}
        if self.api_key:
            headers['Authorization'] = f'Bearer {self.api_key}'
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers,
                                     method='POST' if body is not None else 'GET')
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors='replace')[:300]
            hint = ' (pass --api_key)' if e.code == 401 else ''
            raise EvalError(f'--eval_url {self.base_url}{path}: HTTP {e.code}{hint}: {detail}') from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, 'reason', e)
            raise EvalError(f'--eval_url {self.base_url}: cannot reach the server ({reason}); is `lmforge serve` (or '
                            'another OpenAI-compatible server) running there? The URL ends in /v1') from None

    def models(self) -> list[str]:
        data = self._request('/models').get('data') or []
        names = [m.get('id') for m in data if m.get('id')]
        if not names:
            raise EvalError(f'--eval_url {self.base_url}: GET /models lists no model; pass --served_model_name')
        return names

    def chat(self, messages: list[dict], config) -> str:
        body = {'model': self.model, 'messages': messages, 'max_tokens': config.max_new_tokens,
                'temperature': config.temperature, 'top_p': config.top_p}
        if config.stop:
            body['stop'] = list(config.stop)
        if config.seed is not None:
            body['seed'] = config.seed
        out = self._request('/chat/completions', body)
        return out['choices'][0]['message'].get('content') or ''

    def generate(self, conversations: list[list[dict]], config, workers: int = 4) -> list[str]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda m: self.chat(m, config), conversations))
