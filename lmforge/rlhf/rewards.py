"""Reward functions for grpo/ppo: the built-in ones (ms-swift's names), the registry plugins add to, and the wrapper
that turns a reward model into a reward function.

Every reward function is called the TRL way, once per batch of completions::

    func(prompts=[...], completions=[...], completion_ids=[[...]], **columns) -> [float | None, ...]

``completions`` are texts, or (conversational prompts, what lmforge passes) one-message lists
``[{"role": "assistant", "content": text}]``; ``columns`` are the dataset's other columns, one value per completion
(``solution`` for `accuracy` and `cosine`). `completion_text` reads either form.

Built in (``--reward_funcs NAME``):

- ``accuracy``: 1 when the answer matches ``solution``, else 0. The answer is the last ``\\boxed{...}``, else the
  last ``<answer>...</answer>``, else the whole text (or its last number when the solution is a number); the
  solution likewise (also GSM8K's ``#### 42``). Numbers compare as numbers (``1,000`` = ``1000.0``, ``1/2`` = ``0.5``).
- ``format``: 1 when the completion matches ``--format_pattern`` in full (default ``<think>..</think><answer>..
  </answer>``).
- ``length`` (alias ``soft_overlong``): DAPO's soft overlong punishment: 0 up to ``--soft_max_length`` minus
  ``--soft_cache_length`` tokens, then falling linearly to -1 at ``--soft_max_length``.
- ``cosine``: length-aware correctness ("Demystifying Long CoT"): a right answer earns
  ``--cosine_min_len_value_correct`` when short down to ``--cosine_max_len_value_correct`` at ``--cosine_max_len``
  tokens, a wrong one ``--cosine_min_len_value_wrong`` .. ``--cosine_max_len_value_wrong``, along a cosine.
- ``repetition``: ``--repetition_max_penalty`` x the fraction of repeated word n-grams (``--repetition_n_grams``).
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

from lmforge.errors import DataError

# name -> factory(args) -> reward function. `register_reward` (e.g. from an --external_plugins file) adds to it.
REWARDS: dict = {}


def register_reward(name: str, func=None):
    """Register a reward function (or a class, instantiated with no arguments) under ``name``, for
    ``--reward_funcs name``. Usable as a decorator: ``@register_reward('my_reward')``."""
    def add(f):
        REWARDS[name] = lambda args, _f=f: named(_f() if isinstance(_f, type) else _f, name)
        return f
    return add(func) if func is not None else add


def named(func, name: str):
    """Give a callable the ``__name__`` TRL logs its reward under (``rewards/<name>/mean``)."""
    if getattr(func, '__name__', None) == name:
        return func

    def reward(*a, **kw):
        return func(*a, **kw)
    reward.__name__ = name
    return reward


def completion_text(completion) -> str:
    if isinstance(completion, list):  # conversational: the assistant message(s) generated
        return ''.join(str(m.get('content') or '') for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get('content') or '')
    return str(completion)


# ------------------------------------------------------------------ answer matching
_NUMBER = re.compile(r'-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+')


def _last_boxed(text: str) -> str | None:
    start = text.rfind('\\boxed')
    if start < 0:
        return None
    i = text.find('{', start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == '{':
            depth += 1
        elif text[j] == '}':
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def extract_answer(text: str) -> str:
    """The final answer in a completion or a solution (see the module docstring)."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    tags = re.findall(r'<answer>(.*?)</answer>', text, re.DOTALL)
    if tags:
        return tags[-1]
    if '####' in text:  # GSM8K solutions
        return text.rsplit('####', 1)[1]
    return text


def _number(text: str):
    t = text.strip().strip('$').replace(' ', '').rstrip('.')
    t = t.replace('\\%', '').rstrip('%').replace(',', '')
    frac = re.fullmatch(r'\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}', t)
    if frac:
        t = f'{frac.group(1)}/{frac.group(2)}'
    try:
        return float(Fraction(t))
    except (ValueError, ZeroDivisionError):
        return None


def _normal(text: str) -> str:
    t = text.strip().strip('$').strip()
    t = re.sub(r'\\text\{(.*?)\}', r'\1', t)
    return re.sub(r'\s+', ' ', t).rstrip('.').strip().lower()


def answers_match(completion: str, solution) -> bool:
    gold = extract_answer(str(solution))
    gold_num = _number(gold)
    pred = extract_answer(completion)
    if gold_num is not None:
        pred_num = _number(pred)
        if pred_num is None:  # free text around the answer: its last number
            found = _NUMBER.findall(pred)
            pred_num = _number(found[-1]) if found else None
        return pred_num is not None and math.isclose(pred_num, gold_num, rel_tol=1e-6, abs_tol=1e-9)
    return _normal(pred) == _normal(gold)


def _solutions(kwargs, n: int, name: str) -> list:
    if 'solution' not in kwargs:
        raise DataError(f'the {name} reward compares answers with a "solution" column, and the dataset has none '
                        '(map one with --columns \'{"answer": "solution"}\')')
    return kwargs['solution']


# ------------------------------------------------------------------ built-in rewards
def make_accuracy(args):
    def accuracy(completions, **kwargs):
        solutions = _solutions(kwargs, len(completions), 'accuracy')
        return [float(answers_match(completion_text(c), s)) if s is not None else None
                for c, s in zip(completions, solutions)]
    return accuracy


def make_format(args):
    pattern = re.compile(args.format_pattern, re.DOTALL)

    def format(completions, **kwargs):  # noqa: A001 - the reward's public name
        return [1.0 if pattern.fullmatch(completion_text(c).strip()) else 0.0 for c in completions]
    return format


def _lengths(completions, completion_ids):
    if completion_ids is not None:
        return [len(ids) for ids in completion_ids]
    return [len(completion_text(c).split()) for c in completions]


def make_length(args):
    limit = args.soft_max_length or args.max_completion_length
    cache = args.soft_cache_length if args.soft_cache_length is not None else max(1, limit // 4)
    expected = limit - cache

    def length(completions, completion_ids=None, **kwargs):
        out = []
        for n in _lengths(completions, completion_ids):
            if n <= expected:
                out.append(0.0)
            elif n <= limit:
                out.append((expected - n) / cache)
            else:
                out.append(-1.0)
        return out
    return length


def make_cosine(args):
    max_len = args.cosine_max_len or args.max_completion_length

    def cosine(completions, completion_ids=None, **kwargs):
        solutions = _solutions(kwargs, len(completions), 'cosine')
        out = []
        for c, s, n in zip(completions, solutions, _lengths(completions, completion_ids)):
            if answers_match(completion_text(c), s):
                lo, hi = args.cosine_max_len_value_correct, args.cosine_min_len_value_correct
            else:
                lo, hi = args.cosine_max_len_value_wrong, args.cosine_min_len_value_wrong
            progress = min(n, max_len) / max_len
            out.append(lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * progress)))
        return out
    return cosine


def make_repetition(args):
    n = args.repetition_n_grams

    def repetition(completions, **kwargs):
        out = []
        for c in completions:
            words = completion_text(c).lower().split()
            if len(words) < n:
                out.append(0.0)
                continue
            grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
            out.append((1 - len(set(grams)) / len(grams)) * args.repetition_max_penalty)
        return out
    return repetition


def make_missing_eos_penalty(penalty: float, eos_ids: list[int]):
    """-penalty for a completion that ends without an end-of-turn token (cut at --max_completion_length)."""
    stops = set(eos_ids)

    def missing_eos(completions, completion_ids=None, **kwargs):
        if completion_ids is None:
            return [0.0] * len(completions)
        return [0.0 if ids and ids[-1] in stops else -penalty for ids in completion_ids]
    return missing_eos


REWARDS.update({'accuracy': make_accuracy, 'format': make_format, 'length': make_length,
                'soft_overlong': make_length, 'cosine': make_cosine, 'repetition': make_repetition})
NEEDS_SOLUTION = ('accuracy', 'cosine')


# ------------------------------------------------------------------ reward models
class RewardModelReward:
    """A sequence-classification reward model as a reward function. The text it scores is built exactly as
    `lmforge rlhf --rlhf_type rm` built its training pairs: the prompt through the chat template, then the answer
    with its end-of-turn token(s), nothing after; the score is the head's output at the last token."""

    def __init__(self, model, tokenizer, name: str = 'reward_model', batch_size: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.__name__ = name
        self.batch_size = batch_size

    def encode(self, prompt, completion) -> list[int]:
        from lmforge.rlhf.data import encode_answer

        messages = prompt if isinstance(prompt, list) else [{'role': 'user', 'content': str(prompt)}]
        answer = {'role': 'assistant', 'content': completion_text(completion)}
        prompt_ids, answer_ids = encode_answer(self.tokenizer, messages, answer, field='completion')
        return prompt_ids + answer_ids

    def score_ids(self, sequences: list[list[int]]) -> list[float]:
        import torch

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        out = []
        for i in range(0, len(sequences), self.batch_size):
            chunk = sequences[i:i + self.batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, s in enumerate(chunk):
                ids[j, :len(s)] = torch.tensor(s)
                mask[j, :len(s)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out += logits[:, 0].float().cpu().tolist()
        return out

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return self.score_ids([self.encode(p, c) for p, c in zip(prompts, completions)])
