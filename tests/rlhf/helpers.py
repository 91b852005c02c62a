"""Tasks and measurements shared by the rlhf tests."""
from __future__ import annotations

import json
import math
import os
import random

# small, quick runs: tiny batches, no checkpointing of activations, no reporting
FAST = dict(per_device_train_batch_size=8, gradient_checkpointing=False, report_to=['none'], save_steps=1000,
            logging_steps=5, lora_rank=16, max_length=64, overwrite_output_dir=True)


def letter_pairs(n: int, seed: int) -> list[dict]:
    """"Last letter: <word>" -> the last letter (chosen) over "h" (rejected), for words without an h: a preference
    the base model holds weakly and that carries over to words it was never trained on."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        word = ''.join(rng.choice('abcdefgh') for _ in range(rng.randint(3, 5)))
        if 'h' not in word:
            rows.append({'prompt': f'Last letter: {word}', 'chosen': word[-1], 'rejected': 'h'})
    return rows


def sum_prompts() -> list[dict]:
    """The toy arithmetic task of the online tests: four prompts with their solution."""
    return [{'messages': [{'role': 'user', 'content': f'What is {a}+{b}?'}], 'solution': str(a + b)}
            for a in (2, 3) for b in (2, 3)]


def load(path: str):
    """A checkpoint (or model dir) the way `lmforge infer` loads it."""
    from lmforge.models import load_model, load_tokenizer, resolve_checkpoint

    bundle = resolve_checkpoint(path)
    model = load_model(bundle.base_dir, device='cpu', adapters=bundle.adapters).eval()
    return model, load_tokenizer(bundle.tokenizer_dir)


def answer_logprob(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0, len(prompt_ids) - 1:-1]
    return logits.log_softmax(-1).gather(1, torch.tensor(answer_ids)[:, None]).sum().item()


def pair_margins(path: str, rows: list[dict]) -> list[float]:
    """log P(chosen) - log P(rejected) under the model at ``path``, each answer with its end-of-turn token."""
    from lmforge.data.preference import normalize_pair
    from lmforge.rlhf.data import encode_pair

    model, tok = load(path)
    out = []
    for r in rows:
        e = encode_pair(tok, normalize_pair(r))
        out.append(answer_logprob(model, e['prompt_ids'], e['chosen_ids']) -
                   answer_logprob(model, e['prompt_ids'], e['rejected_ids']))
    return out


def preference(path: str, rows: list[dict]) -> tuple[float, float]:
    """(accuracy, mean margin) of the model's own preference on ``rows``."""
    m = pair_margins(path, rows)
    return sum(x > 0 for x in m) / len(m), sum(m) / len(m)


def expected_accuracy(path: str, rows: list[dict]) -> float:
    """The mean probability of sampling exactly the solution (+ end of turn): the accuracy reward's expectation."""
    from lmforge.rlhf.data import encode_answer

    model, tok = load(path)
    total = 0.0
    for r in rows:
        prompt, answer = encode_answer(tok, r['messages'], {'role': 'assistant', 'content': r['solution']})
        total += math.exp(answer_logprob(model, prompt, answer))
    return total / len(rows)


def logged(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, 'logging.jsonl')) as f:
        return [json.loads(line) for line in f]


def train_logs(output_dir) -> list[dict]:
    return [r for r in logged(output_dir) if 'loss' in r]
