"""The engine interface and the transformers ("pt") engine.

An engine answers chat requests: ``engine.infer(requests, config) -> [Response]`` (batched) and
``engine.stream(request, config)`` (text pieces as they are generated). Prompts are rendered by the same template
code that training used (`render_prompt`, add_generation_prompt=True) and generation stops on the template's
end-of-turn token(s) and the generation config's eos ids, which lmforge checkpoints carry with them.

The server drives the lower-level ``engine.generate_rows(rows, adapter)``: one left-padded batch of `Sequence`s, each
with its own settings (max tokens, sampling, seed, stop strings, penalties, logprobs) and a listener that receives its
text as it is released, plus ``engine.prompt_logprobs`` and ``engine.embed``.
"""
from __future__ import annotations

import contextlib
import random
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator


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


class PtEngine:
    """transformers generation: batched with left padding, streaming through a background thread."""

    def __init__(self, model: str | None, adapters: list | None = None, torch_dtype: str = 'auto',
                 attn_impl: str | None = None, template: str | None = None, system: str | None = None,
                 use_hf: bool = False, revision: str | None = None, token: str | None = None,
                 trust_remote_code: bool = False, device: str | None = None, named_adapters: dict | None = None):
        """``adapters`` are applied to the model for every request; ``named_adapters`` ({name: dir}) are loaded side
        by side and chosen per call of `generate_rows`/`embed`/`prompt_logprobs` (the base model when none is)."""
        from transformers import GenerationConfig

        from lmforge.models import load_model, load_tokenizer, resolve_checkpoint
        from lmforge.templates import apply_template, stop_token_ids

        named_adapters = dict(named_adapters or {})
        if not model and not adapters and named_adapters:  # the base the first named adapter was trained on
            import os

            from lmforge.models.loader import _adapter_base
            model = _adapter_base(os.path.abspath(next(iter(named_adapters.values()))))
        bundle = resolve_checkpoint(model, adapters, use_hf=use_hf, revision=revision, token=token)
        self.bundle = bundle
        self.tokenizer = load_tokenizer(bundle.tokenizer_dir, trust_remote_code)
        self.template_source = apply_template(self.tokenizer, template)
        self.system = system
        self.model = load_model(bundle.base_dir, torch_dtype=torch_dtype, attn_impl=attn_impl, device=device,
                                trust_remote_code=trust_remote_code, adapters=bundle.adapters)
        self.adapter_names = list(named_adapters)
        if named_adapters:
            self.model = _load_named_adapters(self.model, named_adapters, merge_first=bool(bundle.adapters))
        self.model.eval()
        self._lock = threading.RLock()  # one generation at a time on the model (adapter switching is global state)
        self._token_text: dict[int, str] = {}
        try:  # the checkpoint's own generation config (it carries the template's stop tokens) wins
            self.generation_config = GenerationConfig.from_pretrained(bundle.tokenizer_dir)
        except OSError:
            self.generation_config = self.model.generation_config
        self.stop_ids = stop_token_ids(self.tokenizer, self.generation_config)

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

    def token_text(self, token_id: int) -> str:
        """The text of one token (as logprobs show it)."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

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

    def new_sequence(self, prompt_ids: list[int], config: RequestConfig, listener=None) -> Sequence:
        return Sequence(prompt_ids, config, self.tokenizer, self.stop_ids, listener)

    def generate_rows(self, rows: list[Sequence], adapter: str | None = None) -> None:
        """Generate every row of ``rows`` in one left-padded batch; each row gets its own settings (max tokens,
        greedy or sampled with its own seed, stop strings, penalties, logprobs) and is told its text as it goes.
        Returns when every row has finished (``row.finish_reason`` set)."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        rows = [r for r in rows if not r.done]
        if not rows:
            return
        with self._lock, self.adapter_scope(adapter):
            pad = self.tokenizer.pad_token_id
            width = max(len(r.prompt_ids) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
                                device=self.device)
            # Every sampling/penalty setting is explicit: values left unset would be filled from the model's own
            # generation_config (a Qwen checkpoint's repetition_penalty=1.05, ...), and the rows choose their tokens
            # themselves (`_RowSampler`), so generate must only take the argmax of what they leave.
            gen = GenerationConfig(max_new_tokens=max(r.config.max_new_tokens for r in rows), do_sample=False,
                                   num_beams=1, temperature=1.0, top_p=1.0, top_k=50, repetition_penalty=1.0,
                                   no_repeat_ngram_size=0, min_length=0, eos_token_id=self.stop_ids,
                                   pad_token_id=pad)
            try:
                with torch.inference_mode():
                    self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                        logits_processor=LogitsProcessorList([_RowSampler(rows)]),
                                        stopping_criteria=StoppingCriteriaList([_RowStopper(rows)]))
            except Exception as e:
                for r in rows:
                    if not r.done:
                        r.fail(f'{type(e).__name__}: {e}')
                raise
            for r in rows:
                if not r.done:
                    r.finish('length')

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

    def prompt_ids(self, request: InferRequest) -> list[int]:
        from lmforge.templates import render_prompt, with_system

        text = render_prompt(self.tokenizer, with_system(request.messages, self.system), tools=request.tools)
        return self.tokenizer(text, add_special_tokens=False)['input_ids']

    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None,
              max_batch_size: int = 16) -> list[Response]:
        """Answer ``requests``, ``max_batch_size`` at a time (one left-padded batch each, `generate_rows`)."""
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


def _load_named_adapters(model, named: dict, merge_first: bool):
    """Load LoRA adapters side by side under their names (PEFT), so that each request can pick one."""
    from peft import PeftModel

    from lmforge.errors import ModelError

    if merge_first:  # the adapters applied to every request become part of the base
        model = model.merge_and_unload()
    for i, (name, path) in enumerate(named.items()):
        try:
            with warnings.catch_warnings():  # peft asks about gradient checkpointing by a deprecated name
                warnings.simplefilter('ignore', FutureWarning)
                if i == 0:
                    model = PeftModel.from_pretrained(model, path, adapter_name=name)
                else:
                    model.load_adapter(path, adapter_name=name)
        except (OSError, ValueError) as e:
            raise ModelError(f'could not load the adapter {name}={path}: {e}') from None
    return model


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list = field(default_factory=list)  # [(token_id, logprob)], most likely first


def _token_logprob(logprobs, token_id: int, top_n: int) -> TokenLogprob:
    top = []
    if top_n > 0:
        values, indices = logprobs.topk(top_n)
        top = list(zip(indices.tolist(), values.tolist()))
    return TokenLogprob(token_id, float(logprobs[token_id]), top)


class Sequence:
    """One answer being generated: its prompt, its settings, and what it has produced so far.

    Text is released to ``listener(seq, text, logprobs)`` as tokens arrive, except a tail that could still become one
    of the stop strings (or an incomplete UTF-8 character); the last call has ``seq.finish_reason`` set. A stop string
    is cut off and not part of the text, as in OpenAI's API.
    """

    def __init__(self, prompt_ids: list[int], config: RequestConfig, tokenizer, stop_ids, listener=None):
        self.prompt_ids = list(prompt_ids)
        self.config = config
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.listener: Callable | None = listener
        self.index = 0  # the choice it answers, for whoever submitted it
        self.token_ids: list[int] = []  # every generated id, the end-of-turn token included
        self.text = ''  # released text
        self.logprobs: list[TokenLogprob] = []  # released tokens' logprobs (config.logprobs)
        self.finish_reason: str | None = None  # 'stop' | 'length' | 'abort' | 'error'
        self.error: str | None = None
        self.cancelled = False
        self.generator = None  # torch.Generator of a sampled row, made on first use
        self.pending_logprob: TokenLogprob | None = None  # set by the sampler for the token being chosen
        self._stops = [s for s in (config.stop or []) if s]
        self._text_ids: list[int] = []  # generated ids that carry text (the end-of-turn token is not one)
        self._full = ''  # decoded text so far (cut at a stop string once one appears)
        self._prefix_off = self._read_off = 0  # incremental detokenization window
        self._token_ends: list[tuple[int, TokenLogprob]] = []  # (end offset in _full, logprob) of unreleased tokens

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop generating this row at the next step (its client went away)."""
        self.cancelled = True

    def push(self, token_id: int, logprob: TokenLogprob | None = None) -> None:
        """Take the next generated token."""
        if self.done:
            return
        self.token_ids.append(token_id)
        if token_id in self.stop_ids:
            self.finish('stop')
            return
        self._text_ids.append(token_id)
        before = len(self._full)
        self._decode_step()
        if logprob is not None:
            self._token_ends.append((len(self._full), logprob))
        if self._stops and len(self._full) > before:
            longest = max(map(len, self._stops))
            start = max(0, before - longest + 1)
            hits = [i for i in (self._full.find(s, start) for s in self._stops) if i >= 0]
            if hits:
                self._full = self._full[:min(hits)]
                self.finish('stop')
                return
        if len(self.token_ids) >= self.config.max_new_tokens:
            self.finish('length')
            return
        self._release(len(self._full) - self._held_back())

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.finish_reason = reason
        self._release(len(self._full), final=True)

    def fail(self, message: str) -> None:
        self.error = message
        self.finish('error')

    def _decode_step(self) -> None:
        decode = self.tokenizer.decode
        prefix = decode(self._text_ids[self._prefix_off:self._read_off], skip_special_tokens=True)
        new = decode(self._text_ids[self._prefix_off:], skip_special_tokens=True)
        if len(new) > len(prefix) and not new.endswith('\ufffd'):
            self._full += new[len(prefix):]
            self._prefix_off, self._read_off = self._read_off, len(self._text_ids)

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is the start of a stop string."""
        best = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(self._full)), best, -1):
                if self._full.endswith(s[:k]):
                    best = k
                    break
        return best

    def _release(self, upto: int, final: bool = False) -> None:
        delta = self._full[len(self.text):upto] if upto > len(self.text) else ''
        lps = []
        while self._token_ends and self._token_ends[0][0] <= upto:
            lps.append(self._token_ends.pop(0)[1])
        if final:
            self._token_ends.clear()
        self.text += delta
        self.logprobs += lps
        if (delta or lps or final) and self.listener is not None:
            self.listener(self, delta, lps)


class _RowSampler:
    """A logits processor that picks each row's next token by that row's own settings (penalties, logit bias,
    temperature/top-k/top-p with its own seeded generator) and records its logprob; the chosen token is left as the
    only one possible, so generate's greedy step takes it. Rows without any of these are left to generate's argmax."""

    def __init__(self, rows: list[Sequence]):
        self.rows = rows

    def __call__(self, input_ids, scores):
        import torch

        for i, row in enumerate(self.rows):
            row.pending_logprob = None
            cfg = row.config
            if row.done or not (cfg.temperature > 0 or cfg.logprobs or cfg.logit_bias or cfg.presence_penalty
                                or cfg.frequency_penalty or cfg.repetition_penalty != 1.0):
                continue
            raw = scores[i]
            s = raw.clone()
            if cfg.logit_bias:
                for tid, bias in cfg.logit_bias.items():
                    if 0 <= int(tid) < s.shape[0]:
                        s[int(tid)] += float(bias)
            if cfg.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.token_ids)), device=s.device)
                vals = s[seen]
                s[seen] = torch.where(vals > 0, vals / cfg.repetition_penalty, vals * cfg.repetition_penalty)
            if (cfg.presence_penalty or cfg.frequency_penalty) and row.token_ids:
                counts = torch.bincount(torch.tensor(row.token_ids, device=s.device), minlength=s.shape[0])
                counts = counts[:s.shape[0]].to(s.dtype)
                s -= cfg.frequency_penalty * counts + cfg.presence_penalty * (counts > 0).to(s.dtype)
            if cfg.temperature > 0:
                chosen = self._sample(row, s / cfg.temperature)
            else:
                chosen = int(torch.argmax(s))
            if cfg.logprobs:
                row.pending_logprob = _token_logprob(torch.log_softmax(raw.float(), dim=-1), chosen,
                                                     cfg.top_logprobs)
            scores[i] = float('-inf')
            scores[i, chosen] = 0.0
        return scores

    @staticmethod
    def _sample(row: Sequence, s) -> int:
        import torch

        cfg = row.config
        if 0 < cfg.top_k < s.shape[0]:
            kth = torch.topk(s, cfg.top_k).values[-1]
            s = s.masked_fill(s < kth, float('-inf'))
        if cfg.top_p < 1.0:
            sorted_s, order = torch.sort(s, descending=True)
            probs = torch.softmax(sorted_s, dim=-1)
            drop = probs.cumsum(-1) - probs > cfg.top_p  # keep the smallest set whose mass reaches top_p
            s = s.clone()
            s[order[drop]] = float('-inf')
        if row.generator is None:
            row.generator = torch.Generator(device=s.device)
            row.generator.manual_seed(cfg.seed if cfg.seed is not None else random.getrandbits(63))
        return int(torch.multinomial(torch.softmax(s, dim=-1), 1, generator=row.generator))


class _RowStopper:
    """A stopping criterion that hands each row its new token and reports which rows are done (end-of-turn token,
    stop string, its own max tokens, or cancelled)."""

    def __init__(self, rows: list[Sequence]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, new):
            if row.done:
                continue
            if row.cancelled:
                row.finish('abort')
                continue
            row.push(token, row.pending_logprob)
        return torch.tensor([r.done for r in self.rows], dtype=torch.bool, device=input_ids.device)
