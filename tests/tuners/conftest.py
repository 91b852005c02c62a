"""Helpers of the tuner tests: train a tuner briefly through `lmforge sft`, rebuild its untrained starting point,
reload its checkpoint, and score a model on the memorisation facts."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import fact_rows, write_jsonl

COMMON = dict(per_device_train_batch_size=16, logging_steps=1, gradient_checkpointing=False, report_to=['none'],
              max_length=64, overwrite_output_dir=True, save_steps=1000, warmup_ratio=0.1, seed=42)


@pytest.fixture(scope='session')
def facts_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp('facts') / 'facts.jsonl', fact_rows(64))


def logged_losses(result) -> list[float]:
    return [h['loss'] for h in result['log_history'] if 'loss' in h]


def train(model_dir, data, out, tuner, **kw):
    from lmforge import sft

    options = {**COMMON, 'max_steps': 12, 'learning_rate': 1e-2, **kw}
    return sft(model=model_dir, dataset=[data], tuner_type=tuner, output_dir=str(out), **options)


def starting_point(model_dir, tuner, **kw):
    """The model exactly as `lmforge sft` starts training it (same seed, same tuner)."""
    import transformers

    from lmforge.args import SftArgs, from_kwargs
    from lmforge.models import load_model
    from lmforge.tuners import prepare_model

    args = from_kwargs(SftArgs, model=model_dir, dataset=['x.jsonl'], tuner_type=tuner,
                       **{**COMMON, 'max_steps': 12, **kw})
    transformers.set_seed(args.seed)
    model = load_model(model_dir, device='cpu')
    model, _, _ = prepare_model(model, args)
    return model


def fact_batch(tokenizer):
    """The eight facts as one padded batch with labels on the answers only."""
    import torch

    rows = fact_rows(8)
    ids, labels = [], []
    for r in rows:
        prompt = tokenizer.apply_chat_template(r['messages'][:1], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        full = tokenizer.apply_chat_template(r['messages'], tokenize=True, return_dict=False)
        assert full[:len(prompt)] == prompt
        ids.append(full)
        labels.append([-100] * len(prompt) + full[len(prompt):])
    n = max(map(len, ids))
    pad = tokenizer.pad_token_id
    mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids])
    return {'input_ids': torch.tensor([x + [pad] * (n - len(x)) for x in ids]), 'attention_mask': mask,
            'labels': torch.tensor([x + [-100] * (n - len(x)) for x in labels])}


def fact_loss(model, batch) -> float:
    import torch

    import torch.nn.functional as F

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask'], use_cache=False).logits
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch['labels'][:, 1:].flatten()))


def read_args(ckpt) -> dict:
    with open(os.path.join(ckpt, 'args.json')) as f:
        return json.load(f)
