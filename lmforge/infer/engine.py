"""The engine interface and the transformers ("pt") engine.

An engine answers chat requests: ``engine.infer(requests, config) -> [Response]`` (batched) and
``engine.stream(request, config)`` (text pieces as they are generated). Prompts are rendered by the same template
code that training used (`render_prompt`, add_generation_prompt=True) and generation stops on the template's
end-of-turn token(s) and the generation config's eos ids, which lmforge checkpoints carry with them.

The server drives the lower-level ``engine.generate_rows(rows, adapter)``: one left-padded batch of `Sequence`s, each
with its own settings (max tokens, sampling, seed, stop strings, penalties, logprobs) and a listener that receives its
text as it is released (the pt engine's batch can be paused and continued with new rows: continuous batching), plus
``engine.prompt_logprobs`` and ``engine.embed``.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from lmforge.infer.sequence import Sequence, _RowSampler, _RowStopper, _token_logprob


@dataclass
class RequestConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    stop: list = field(default_factory=list)
    seed: int | None = None
    # Used by `generate_rows` (the server); `infer`/`stream` ignore them.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: dict | None = None  # token id -> added to its logit


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


class Engine:
    """What every engine shares: the resolved checkpoint (``bundle``), its tokenizer and chat template, the stop ids,
    prompts rendered by lmforge's own template code (what training saw) and tokenized here, `Sequence`s, and
    `infer`/`stream` on top of the engine's ``generate_rows``. `PtEngine` is one; the optional vLLM, SGLang and
    LMDeploy engines (lmforge/infer/backends.py) are the others."""

    adapter_names: list = []  # LoRA adapters served by name (set by `_open_checkpoint`)

    def _open_checkpoint(self, model, adapters, named_adapters, template, system, use_hf, revision, token,
                         trust_remote_code) -> dict:
        """Resolve --model/--adapters, load the tokenizer and the template; returns the named adapters."""
        from lmforge.models import load_tokenizer, resolve_checkpoint
        from lmforge.templates import apply_template

        named_adapters = dict(named_adapters or {})
        if not model and not adapters and named_adapters:  # the base the first named adapter was trained on
            import os

            from lmforge.models.loader import _adapter_base
            model = _adapter_base(os.path.abspath(next(iter(named_adapters.values()))))
        self.bundle = resolve_checkpoint(model, adapters, use_hf=use_hf, revision=revision, token=token)
        self.tokenizer = load_tokenizer(self.bundle.tokenizer_dir, trust_remote_code)
        self.template_source = apply_template(self.tokenizer, template)
        self.system = system
        self.adapter_names = list(named_adapters)
        self._token_text: dict[int, str] = {}
        return named_adapters

    def _set_stop_ids(self, fallback: Callable | None = None) -> None:
        """The checkpoint's own generation config (it carries the template's stop tokens), else ``fallback()``, and
        the ids that end generation."""
        from transformers import GenerationConfig

        from lmforge.templates import stop_token_ids

        try:
            self.generation_config = GenerationConfig.from_pretrained(self.bundle.tokenizer_dir)
        except OSError:
            self.generation_config = fallback() if fallback else None
        self.stop_ids = stop_token_ids(self.tokenizer, self.generation_config)

    def token_text(self, token_id: int) -> str:
        """The text of one token (as logprobs show it)."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def new_sequence(self, prompt_ids: list[int], config: RequestConfig, listener=None) -> Sequence:
        return Sequence(prompt_ids, config, self.tokenizer, self.stop_ids, listener)

    def generate_rows(self, rows: list[Sequence], adapter: str | None = None) -> None:
        raise NotImplementedError

    def prompt_ids(self, request: InferRequest) -> list[int]:
        from lmforge.templates import render_prompt, with_system

        text = render_prompt(self.tokenizer, with_system(request.messages, self.system), tools=request.tools)
        return self.tokenizer(text, add_special_tokens=False)['input_ids']

    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None,
              max_batch_size: int = 16) -> list[Response]:
        """Answer ``requests``, ``max_batch_size`` at a time (one `generate_rows` call each)."""
        config = config or RequestConfig()
        out = []
        for start in range(0, len(requests), max_batch_size):
            rows = [self.new_sequence(self.prompt_ids(r), config) for r in requests[start:start + max_batch_size]]
            self.generate_rows(rows)
            out += [Response(text=r.text, finish_reason=r.finish_reason, prompt_tokens=len(r.prompt_ids),
                             completion_tokens=len(r.token_ids)) for r in rows]
        return out

    def stream(self, request: InferRequest, config: RequestConfig | None = None) -> Iterator[str]:
        """Yield the answer's text as it is generated (`generate_rows` on a background thread)."""
        import queue

        pieces: queue.Queue = queue.Queue()
        row = self.new_sequence(self.prompt_ids(request), config or RequestConfig(),
                                listener=lambda seq, text, _logprobs: pieces.put(text))

        def work():
            try:
                self.generate_rows([row])
            finally:
                pieces.put(None)  # the end, after the row's last text (or its failure)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while (text := pieces.get()) is not None:
            if text:
                yield text
        thread.join()
        if row.error:
            raise RuntimeError(f'generation failed: {row.error}')


class PtEngine(Engine):
    """transformers generation: batched with left padding, streaming through a background thread."""

    def __init__(self, model: str | None, adapters: list | None = None, torch_dtype: str = 'auto',
                 attn_impl: str | None = None, template: str | None = None, system: str | None = None,
                 use_hf: bool = False, revision: str | None = None, token: str | None = None,
                 trust_remote_code: bool = False, device: str | None = None, named_adapters: dict | None = None):
        """``adapters`` are applied to the model for every request; ``named_adapters`` ({name: dir}) are loaded side
        by side and chosen per call of `generate_rows`/`embed`/`prompt_logprobs` (the base model when none is)."""
        from lmforge.models import load_model

        named_adapters = self._open_checkpoint(model, adapters, named_adapters, template, system, use_hf, revision,
                                               token, trust_remote_code)
        bundle = self.bundle
        self.model = load_model(bundle.base_dir, torch_dtype=torch_dtype, attn_impl=attn_impl, device=device,
                                trust_remote_code=trust_remote_code, adapters=bundle.adapters)
        if named_adapters:
            self.model = _load_named_adapters(self.model, named_adapters, merge_first=bool(bundle.adapters))
        self.model.eval()
        self._lock = threading.RLock()  # one generation at a time on the model (adapter switching is global state)
        self._set_stop_ids(lambda: self.model.generation_config)

    @classmethod
    def on_model(cls, model, tokenizer, stop_ids: list[int]) -> 'PtEngine':
        """The engine's generation (`new_sequence`, `generate_rows`) on a model already in memory, as it is (no
        checkpoint resolved, no adapters switched, training mode untouched): e.g. the model being trained."""
        engine = cls.__new__(cls)
        engine.model, engine.tokenizer, engine.stop_ids = model, tokenizer, stop_ids
        engine.system, engine.adapter_names, engine._token_text = None, [], {}
        engine._lock = threading.RLock()
        return engine

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def max_model_len(self) -> int | None:
        """The context length the model was built for (max_position_embeddings), when its config says."""
        config = self.model.config
        config = config.get_text_config() if hasattr(config, 'get_text_config') else config
        return getattr(config, 'max_position_embeddings', None)

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        config = config.get_text_config() if hasattr(config, 'get_text_config') else config
        return config.hidden_size

    @contextlib.contextmanager
    def adapter_scope(self, adapter: str | None):
        """Run with the named adapter active, or with all named adapters off (``None``: the base model)."""
        if not self.adapter_names:
            if adapter is not None:
                raise ValueError(f'no adapter named {adapter!r} is loaded')
            yield
        elif adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            if adapter not in self.adapter_names:
                raise ValueError(f'no adapter named {adapter!r} is loaded; loaded: {self.adapter_names}')
            self.model.set_adapter(adapter)
            yield

    # Continuous batching (`EngineWorker`): a batch pauses after a step (``interrupt``) and its unfinished rows go on
    # in the next one beside new rows, from prompt + what they generated (re-prefilled: vLLM's "recompute"
    # preemption), settings, seeded generator and detokenization intact. transformers' own (`generate_batch`, paged
    # attention) has per request only temperature/top-k/top-p (no seed, penalties, logit bias, top logprobs, stop
    # strings, adapters) and was slower than `generate` on the CPU (bench/RESULTS.md).
    supports_interrupt = True

    def generate_rows(self, rows: list[Sequence], adapter: str | None = None,
                      interrupt: Callable[[int], bool] | None = None) -> list[Sequence]:
        """Generate every row of ``rows`` in one left-padded batch; each row gets its own settings (max tokens,
        greedy or sampled with its own seed, stop strings, penalties, logprobs) and is told its text as it goes.
        Returns when every row has finished (``row.finish_reason`` set): ``[]``; or, when ``interrupt(active_rows)``
        returned true after a step, at once with the rows not finished, to be continued by a later call."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        rows = [r for r in rows if not r.done]
        if not rows:
            return []
        with self._lock, self.adapter_scope(adapter):
            pad = self.tokenizer.pad_token_id
            contexts = [r.prompt_ids + r.token_ids for r in rows]  # a continued row goes on from where it was
            width = max(map(len, contexts))
            ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts], device=self.device)
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=self.device)
            # Every sampling/penalty setting is explicit: values left unset would be filled from the model's own
            # generation_config (a Qwen checkpoint's repetition_penalty=1.05, ...), and the rows choose their tokens
            # themselves (`_RowSampler`), so generate must only take the argmax of what they leave.
            gen = GenerationConfig(max_new_tokens=max(r.config.max_new_tokens - len(r.token_ids) for r in rows),
                                   do_sample=False, num_beams=1, temperature=1.0, top_p=1.0, top_k=50,
                                   repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0,
                                   eos_token_id=self.stop_ids, pad_token_id=pad)
            stopper = _RowStopper(rows, interrupt)
            try:
                with torch.inference_mode():
                    sampler = [_RowSampler(rows)] if any(_RowSampler.chooses(r.config) for r in rows) else []
                    stopper.started = time.perf_counter()
                    self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                        logits_processor=LogitsProcessorList(sampler),
                                        stopping_criteria=StoppingCriteriaList([stopper]))
            except Exception as e:
                for r in rows:
                    if not r.done:
                        r.fail(f'{type(e).__name__}: {e}')
                raise
            if stopper.interrupted:
                return [r for r in rows if not r.done]
            for r in rows:
                if not r.done:
                    r.finish('length')
            return []

    def prompt_logprobs(self, prompt_ids: list[int], top_n: int = 0, adapter: str | None = None) -> list:
        """[None, TokenLogprob, ...]: each prompt token's log-probability given the tokens before it (the first has
        none), with the ``top_n`` most likely alternatives."""
        import torch

        with self._lock, self.adapter_scope(adapter), torch.inference_mode():
            ids = torch.tensor([prompt_ids], device=self.device)
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
            out = [None]
            for start in range(0, len(prompt_ids) - 1, 256):  # log_softmax in chunks: L x vocab floats add up
                lp = torch.log_softmax(logits[start:start + 256].float(), dim=-1)
                for j in range(lp.shape[0]):
                    pos = start + j
                    if pos + 1 >= len(prompt_ids):
                        break
                    out.append(_token_logprob(lp[j], prompt_ids[pos + 1], top_n))
            return out

    def embed(self, inputs: list[list[int]], pooling: str = 'mean', adapter: str | None = None,
              max_batch_size: int = 16) -> list[list[float]]:
        """One vector per input: the last hidden state (after the final norm), mean-pooled over the tokens or taken
        at the last token."""
        import torch

        decoder = self._decoder()
        out = []
        with self._lock, self.adapter_scope(adapter), torch.inference_mode():
            for start in range(0, len(inputs), max_batch_size):
                chunk = inputs[start:start + max_batch_size]
                width = max(map(len, chunk))
                pad = self.tokenizer.pad_token_id
                ids = torch.tensor([x + [pad] * (width - len(x)) for x in chunk], device=self.device)
                mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk], device=self.device)
                if decoder is not None:
                    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                else:
                    hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
                hidden = hidden.float()
                if pooling == 'last':
                    pooled = hidden[torch.arange(len(chunk), device=hidden.device), mask.sum(1) - 1]
                else:
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * m).sum(1) / m.sum(1)
                out.extend(pooled.cpu().tolist())
        return out

    def _decoder(self):
        """The transformer under the LM head (its output is the final-normed last hidden state), when found."""
        model = self.model.get_base_model() if hasattr(self.model, 'get_base_model') else self.model
        decoder = getattr(model, getattr(model, 'base_model_prefix', 'model'), None)
        return decoder if isinstance(decoder, __import__('torch').nn.Module) and decoder is not model else None


def _load_named_adapters(model, named: dict, merge_first: bool):
    """Load LoRA adapters side by side under their names (PEFT), so that each request can pick one."""
    from peft import PeftModel

    from lmforge.errors import ModelError
    from lmforge.hub import check_adapter_dir

    if merge_first:  # the adapters applied to every request become part of the base
        model = model.merge_and_unload()
    for i, (name, path) in enumerate(named.items()):
        check_adapter_dir(path)
        try:
            if i == 0:
                model = PeftModel.from_pretrained(model, path, adapter_name=name)
            else:
                model.load_adapter(path, adapter_name=name)
        except (OSError, ValueError) as e:
            raise ModelError(f'could not load the adapter {name}={path}: {e}') from None
    return model
