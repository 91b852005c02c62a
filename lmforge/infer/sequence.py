"""A generated answer (`Sequence`: prompt, settings, tokens, text released to a listener, finish reason) and the
per-row sampling and stopping that the transformers engine plugs into ``model.generate`` (`_RowSampler`,
`_RowStopper`). The optional engines (lmforge.infer.backends) fill the same `Sequence`s."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lmforge.infer.engine import RequestConfig


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
    is cut off and not part of the text, as in OpenAI's API. With ``config.logprobs``, every generated token has its
    entry in ``logprobs`` (as in vLLM): those of a stop string cut off and the end-of-turn token come with the last
    call.
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
        self.logprobs: list[TokenLogprob] = []  # every generated token's (config.logprobs), released with its text
        self.finish_reason: str | None = None  # 'stop' | 'length' | 'abort' | 'error'
        self.error: str | None = None
        self.cancelled = False
        self.generator = None  # torch.Generator of a sampled row, made on first use
        self.pending_logprob: TokenLogprob | None = None  # set by the sampler for the token being chosen
        self._stops = [s for s in (config.stop or []) if s]
        self._text_ids: list[int] = []  # generated ids that carry text (the end-of-turn token is not one)
        self._full = ''  # decoded text so far (cut at a stop string once one appears)
        self._prefix_off = self._read_off = 0  # incremental detokenization window
        self._stream = _decode_stream(tokenizer)  # or, when it decodes the same, tokenizers' own (faster)
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
            # The end-of-turn/eos token is generated: it has no text, but its logprob is released with the last
            # text (as vLLM and OpenAI's completions do; lm-eval's loglikelihood reads the one generated token after
            # the echoed prompt). Chat leaves it out of `logprobs.content`, which covers the message's text.
            if logprob is not None:
                self._token_ends.append((len(self._full), logprob))
            self.finish('stop')
            return
        self._text_ids.append(token_id)
        before = len(self._full)
        self._decode_step(token_id)
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

    def _decode_step(self, token_id: int) -> None:
        if self._stream is not None:
            piece = self._stream.step(self.tokenizer._tokenizer, token_id)
            if piece:
                self._full += piece
            return
        decode = self.tokenizer.decode
        prefix = decode(self._text_ids[self._prefix_off:self._read_off], skip_special_tokens=True)
        new = decode(self._text_ids[self._prefix_off:], skip_special_tokens=True)
        if len(new) > len(prefix) and not new.endswith('\ufffd'):
            self._full += new[len(prefix):]
            self._prefix_off, self._read_off = self._read_off, len(self._text_ids)

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is the start of a stop string."""
        best, full = 0, self._full
        for s in self._stops:
            # Only tails that start with the stop string's first character can be its start: trying those alone,
            # longest first, keeps a long stop string from costing O(len(text)^2) per token.
            at = len(full) - min(len(s) - 1, len(full))
            while (at := full.find(s[0], at)) >= 0 and len(full) - at > best:
                if s.startswith(full[at:]):
                    best = len(full) - at
                    break
                at += 1
        return best

    def _release(self, upto: int, final: bool = False) -> None:
        delta = self._full[len(self.text):upto] if upto > len(self.text) else ''
        lps = []
        while self._token_ends and (final or self._token_ends[0][0] <= upto):  # the last call: all that is left,
            lps.append(self._token_ends.pop(0)[1])  # the tokens of a stop string that was cut off included
        self.text += delta
        self.logprobs += lps
        if (delta or lps or final) and self.listener is not None:
            self.listener(self, delta, lps)


def _decode_stream(tokenizer):
    """tokenizers' incremental decoder (one call into Rust per token instead of two decodes of a window) when
    ``tokenizer.decode`` is exactly the fast backend's decode: no override in its class, no clean-up of spaces;
    None otherwise (the window is decoded in Python then)."""
    try:
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # tokenizers < 0.21, another transformers layout
        return None
    cls = type(tokenizer)
    if (not isinstance(getattr(tokenizer, '_tokenizer', None), Tokenizer) or cls.decode is not
            PreTrainedTokenizerBase.decode or cls._decode is not TokenizersBackend._decode
            or getattr(tokenizer, 'clean_up_tokenization_spaces', True)):
        return None
    return DecodeStream(skip_special_tokens=True)


class _RowSampler:
    """A logits processor that picks each row's next token by that row's own settings (penalties, logit bias,
    temperature/top-k/top-p with its own seeded generator) and records its logprob; the chosen token is left as the
    only one possible, so generate's greedy step takes it. Rows without any of these are left to generate's argmax."""

    def __init__(self, rows: list[Sequence]):
        self.rows = rows

    @staticmethod
    def chooses(cfg: RequestConfig) -> bool:
        """Whether a row with these settings needs more than the argmax (a batch of plain greedy rows runs without
        this processor: generate's own loop, nothing added per step)."""
        return bool(cfg.temperature > 0 or cfg.logprobs or cfg.logit_bias or cfg.presence_penalty
                    or cfg.frequency_penalty or cfg.repetition_penalty != 1.0)

    def __call__(self, input_ids, scores):
        import torch

        for i, row in enumerate(self.rows):
            row.pending_logprob = None
            cfg = row.config
            if row.done or not self.chooses(cfg):
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
    stop string, its own max tokens, or cancelled); all of them, to pause the batch, when ``interrupt`` says so once
    decoding has taken as long as re-prefilling the unfinished rows would (scaled from this batch's own prefill), so
    that pausing at most doubles the time: at once with a cheap prefill (a GPU, short contexts), later with long
    contexts on a CPU (there a prefill of 8 x 300 tokens costs ~70 decode steps)."""

    def __init__(self, rows: list[Sequence], interrupt: Callable[[int], bool] | None = None):
        self.rows = rows
        self.interrupt = interrupt
        self.interrupted = False
        self.contexts = sum(len(r.prompt_ids) + len(r.token_ids) for r in rows)
        self.started = time.perf_counter()  # reset right before generate
        self.prefill_s: float | None = None  # until the first step: the prefill

    def _affordable(self) -> bool:
        left = sum(len(r.prompt_ids) + len(r.token_ids) for r in self.rows if not r.done)
        return time.perf_counter() - self.started - self.prefill_s >= self.prefill_s * left / self.contexts

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.prefill_s is None:
            self.prefill_s = time.perf_counter() - self.started
        new = input_ids[:, -1].tolist()
        active = 0
        for row, token in zip(self.rows, new):
            if row.done:
                continue
            if row.cancelled:
                row.finish('abort')
                continue
            row.push(token, row.pending_logprob)
            active += not row.done
        if active and self.interrupt is not None and self.interrupt(active) and self._affordable():
            self.interrupted = True
            return torch.ones(len(self.rows), dtype=torch.bool, device=input_ids.device)
        return torch.tensor([r.done for r in self.rows], dtype=torch.bool, device=input_ids.device)
