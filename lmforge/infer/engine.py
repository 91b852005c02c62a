"""The engine interface and the transformers ("pt") engine.

An engine answers chat requests: ``engine.infer(requests, config) -> [Response]`` (batched) and
``engine.stream(request, config)`` (text pieces as they are generated). Prompts are rendered by the same template
code that training used (`render_prompt`, add_generation_prompt=True) and generation stops on the template's
end-of-turn token(s) and the generation config's eos ids, which lmforge checkpoints carry with them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class RequestConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    stop: list = field(default_factory=list)
    seed: int | None = None


@dataclass
class InferRequest:
    messages: list
    tools: list | None = None


@dataclass
class Response:
    text: str
    finish_reason: str  # 'stop' | 'length'
    prompt_tokens: int
    completion_tokens: int


class PtEngine:
    """transformers generation: batched with left padding, streaming through a background thread."""

    def __init__(self, model: str | None, adapters: list | None = None, torch_dtype: str = 'auto',
                 attn_impl: str | None = None, template: str | None = None, system: str | None = None,
                 use_hf: bool = False, revision: str | None = None, token: str | None = None,
                 trust_remote_code: bool = False, device: str | None = None):
        from transformers import GenerationConfig

        from lmforge.models import load_model, load_tokenizer, resolve_checkpoint
        from lmforge.templates import apply_template, stop_token_ids

        bundle = resolve_checkpoint(model, adapters, use_hf=use_hf, revision=revision, token=token)
        self.bundle = bundle
        self.tokenizer = load_tokenizer(bundle.tokenizer_dir, trust_remote_code)
        self.template_source = apply_template(self.tokenizer, template)
        self.system = system
        self.model = load_model(bundle.base_dir, torch_dtype=torch_dtype, attn_impl=attn_impl, device=device,
                                trust_remote_code=trust_remote_code, adapters=bundle.adapters)
        self.model.eval()
        try:  # the checkpoint's own generation config (it carries the template's stop tokens) wins
            self.generation_config = GenerationConfig.from_pretrained(bundle.tokenizer_dir)
        except OSError:
            self.generation_config = self.model.generation_config
        self.stop_ids = stop_token_ids(self.tokenizer, self.generation_config)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def prompt_ids(self, request: InferRequest) -> list[int]:
        from lmforge.templates import render_prompt, with_system

        text = render_prompt(self.tokenizer, with_system(request.messages, self.system), tools=request.tools)
        return self.tokenizer(text, add_special_tokens=False)['input_ids']

    def _generate_kwargs(self, config: RequestConfig) -> dict:
        import torch
        from transformers import GenerationConfig

        sample = config.temperature > 0
        if sample and config.seed is not None:
            torch.manual_seed(config.seed)
        gen = GenerationConfig(max_new_tokens=config.max_new_tokens, do_sample=sample,
                               temperature=config.temperature if sample else None,
                               top_p=config.top_p if sample else None, top_k=config.top_k if sample else None,
                               repetition_penalty=config.repetition_penalty, eos_token_id=self.stop_ids,
                               pad_token_id=self.tokenizer.pad_token_id)
        kwargs = {'generation_config': gen}
        if config.stop:
            kwargs.update(stop_strings=list(config.stop), tokenizer=self.tokenizer)
        return kwargs

    def _finish(self, new_ids: list[int], config: RequestConfig, n_prompt: int) -> Response:
        while new_ids and new_ids[-1] == self.tokenizer.pad_token_id and new_ids[-1] not in self.stop_ids:
            new_ids = new_ids[:-1]
        stopped = bool(new_ids) and new_ids[-1] in self.stop_ids
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        text, cut = cut_at_stop(text, config.stop)
        reason = 'stop' if stopped or cut or len(new_ids) < config.max_new_tokens else 'length'
        return Response(text=text, finish_reason=reason, prompt_tokens=n_prompt, completion_tokens=len(new_ids))

    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None,
              max_batch_size: int = 16) -> list[Response]:
        """Answer ``requests``, ``max_batch_size`` at a time (left padding)."""
        import torch

        config = config or RequestConfig()
        out = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(requests), max_batch_size):
            prompts = [self.prompt_ids(r) for r in requests[start:start + max_batch_size]]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, **self._generate_kwargs(config))
            for p, row in zip(prompts, gen[:, width:].tolist()):
                out.append(self._finish(row, config, len(p)))
        return out

    def stream(self, request: InferRequest, config: RequestConfig | None = None) -> Iterator[str]:
        """Yield the answer's text as it is generated."""
        import torch
        from transformers import TextIteratorStreamer

        config = config or RequestConfig()
        prompt = self.prompt_ids(request)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        ids = torch.tensor([prompt], device=self.device)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                      **self._generate_kwargs(config))

        def work():
            with torch.inference_mode():
                self.model.generate(**kwargs)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        emitted = ''
        for piece in streamer:
            text, cut = cut_at_stop(emitted + piece, config.stop)
            if text[len(emitted):]:
                yield text[len(emitted):]
            emitted = text
            if cut:
                break
        thread.join()


def cut_at_stop(text: str, stop: list | None) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string (which is not part of the answer, as in OpenAI's API)."""
    hits = [text.find(s) for s in stop or [] if s and s in text]
    return (text[:min(hits)], True) if hits else (text, False)
