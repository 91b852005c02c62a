"""Fixtures of the rlhf tests: one tiny model with some competence, trained here in a few seconds.

`rl_base_dir` is the session's tiny Qwen2 (tests/conftest.py) after 250 plain-PyTorch steps on two tasks at once:
"Last letter: <word>" -> the word's last letter, and "What is a+b?" (a, b <= 4) -> the sum. At that point it is half
way there (it prefers the right letter on ~80% of new words, gives the right sum ~30% of the time), so preference and
RL training have room to show that they improve it.
"""
from __future__ import annotations

import random

import pytest

from tests.conftest import chat_rows, write_jsonl


def sum_rows(n: int, seed: int, top: int = 4) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, top), rng.randint(0, top)
        rows.append({'messages': [{'role': 'user', 'content': f'What is {a}+{b}?'},
                                  {'role': 'assistant', 'content': str(a + b)}]})
    return rows


@pytest.fixture(scope='session')
def rl_base_dir(tmp_path_factory, tokenizer, qwen2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.data.collator import PadCollator
    from lmforge.demo.build import save_model_dir
    from lmforge.templates import encode_chat

    model = AutoModelForCausalLM.from_pretrained(qwen2_dir)
    encoded = [encode_chat(tokenizer, r['messages']) for r in chat_rows(2000, seed=5, task='last') + sum_rows(2000, 7)]
    collate = PadCollator(tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    for step in range(1, 251):
        loss = model(**collate(random.Random(step).sample(encoded, 32))).loss
        loss.backward()
        opt.step()
        warmup.step()
        opt.zero_grad()
    return save_model_dir(str(tmp_path_factory.mktemp('rl-base')), model, tokenizer)


@pytest.fixture(scope='session')
def reward_model_dir(tmp_path_factory, rl_base_dir):
    """A reward model trained by `lmforge rlhf --rlhf_type rm` on letter pairs (shared by the rm and ppo tests)."""
    from lmforge import rlhf
    from tests.rlhf.helpers import FAST, letter_pairs

    tmp = tmp_path_factory.mktemp('rm')
    data = write_jsonl(tmp / 'pairs.jsonl', letter_pairs(256, seed=1))
    out = rlhf(rlhf_type='rm', model=rl_base_dir, dataset=[data], output_dir=str(tmp / 'out'), max_steps=30,
               learning_rate=5e-3, **FAST)
    return out['last_checkpoint']
