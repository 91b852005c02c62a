"""Helpers of the serve tests: clients, a gated engine, waiting."""
from __future__ import annotations

import threading
import time

import httpx
import openai

MODEL = 'tiny-qwen2'
# A hermes-style ChatML template that renders tools and tool calls (what Qwen2.5's does, minus its defaults).
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools:\n{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.tool_calls %}<|im_start|>assistant\n{{ message.content or '' }}"
    "{%- for call in message.tool_calls %}<tool_call>{\"name\": \"{{ call.function.name }}\", \"arguments\": "
    "{{ call.function.arguments | tojson }}}</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>{{ message.content }}</tool_response>"
    "<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")


def client_for(handle, api_key: str = 'none', **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=handle.url, api_key=api_key, max_retries=0, timeout=60, **kw)


class GatedEngine:
    """The real engine, except that each batch waits for ``gate`` first and its size is recorded: a request held
    in flight for exactly as long as a test needs (no timing guesses)."""

    def __init__(self, engine):
        self._engine = engine
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.events: list[str] = []  # 'generate N' and 'embed', in the order the worker ran them
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate_rows(self, rows, adapter=None, **kwargs):
        self.batches.append(len(rows))
        self.events.append(f'generate {len(rows)}')
        self.entered.set()
        assert self.gate.wait(30), 'test gate never opened'
        return self._engine.generate_rows(rows, adapter, **kwargs)

    def embed(self, *args, **kwargs):
        self.events.append('embed')
        return self._engine.embed(*args, **kwargs)


def wait_for(predicate, timeout: float = 15.0, what: str = 'condition'):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.01)


def health(handle) -> dict:
    return httpx.get(handle.base_url + '/health', timeout=10).json()
