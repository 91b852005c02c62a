"""Per-sample attention for padding-free batches (lmforge.train.varlen): the same loss and gradients as transformers'
block-masked SDPA and as each sample alone, used by `lmforge sft`, and SDPA's own path wherever it does not apply."""
import json
import os

import pytest

from lmforge.data import PadCollator, PaddingFreeCollator, pack
from lmforge.templates import IGNORE_INDEX, encode_chat
from lmforge.train.varlen import NAME, disable_varlen_attention, enable_varlen_attention, sequence_bounds
from tests.conftest import chat_rows


def _model(path, **config):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation='sdpa', **config)


def _samples(tokenizer, n=7):
    samples = [encode_chat(tokenizer, r['messages']) for r in chat_rows(n, seed=5)]
    samples[0] = {'input_ids': samples[0]['input_ids'] * 3, 'labels': samples[0]['labels'] * 3}  # uneven lengths
    return samples


def _loss_and_grads(model, batch, n_items, grads=True):
    from transformers import TrainingArguments

    from lmforge.train.trainer import LmTrainer

    trainer = LmTrainer(model=model, args=TrainingArguments('/tmp/unused', report_to='none'))
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
    if not grads:
        return loss.item(), {}
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sequence_bounds():
    assert sequence_bounds([0, 1, 2, 0, 1, 0]) == [0, 3, 5, 6]
    assert sequence_bounds([0, 1, 2, 3]) == [0, 4]
    assert sequence_bounds([2, 3, 0, 1]) == [0, 2, 4]  # a row that starts mid-sample still starts a segment


def test_per_sample_attention_equals_block_masked_sdpa_and_each_sample_alone(qwen2_dir, tokenizer):
    import torch

    samples = _samples(tokenizer)
    n_items = sum(sum(x != IGNORE_INDEX for x in s['labels'][1:]) for s in samples)
    model = _model(qwen2_dir)
    model.train()
    alone = sum(_loss_and_grads(model, PadCollator(tokenizer.pad_token_id)([s]), n_items)[0] for s in samples)
    batch = PaddingFreeCollator()(samples)
    assert batch['cu_seq_lens_q'].tolist() == [0] + list(torch.tensor([len(s['input_ids']) for s in samples])
                                                         .cumsum(0).tolist())
    masked_loss, masked_grads = _loss_and_grads(model, batch, n_items)
    assert enable_varlen_attention(model) and model.config._attn_implementation == NAME
    varlen_loss, varlen_grads = _loss_and_grads(model, batch, n_items)
    assert varlen_loss == pytest.approx(alone, rel=1e-5) and varlen_loss == pytest.approx(masked_loss, rel=1e-6)
    assert masked_grads.keys() == varlen_grads.keys()
    for name, grad in masked_grads.items():
        torch.testing.assert_close(varlen_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    # the boundaries are really what separates the samples here: claiming one sample changes the loss
    whole = dict(batch, cu_seq_lens_q=torch.tensor([0, batch['input_ids'].shape[1]], dtype=torch.int32))
    assert abs(_loss_and_grads(model, whole, n_items)[0] - varlen_loss) > 1e-3

    # packed rows (several samples per item, position ids carried by the items) give the same loss
    packed = pack(samples, 64, seed=1)
    assert any(p['position_ids'].count(0) > 1 for p in packed)
    assert _loss_and_grads(model, PaddingFreeCollator()(packed), n_items)[0] == pytest.approx(alone, rel=1e-5)


def test_outside_padding_free_batches_the_model_is_plain_sdpa(qwen2_dir, tokenizer):
    """Padded batches, left-padded generation and a sliding window shorter than a sample go through SDPA with the
    model's own mask, so enabling per-sample attention changes nothing there."""
    import torch

    samples = _samples(tokenizer)
    n_items = sum(sum(x != IGNORE_INDEX for x in s['labels'][1:]) for s in samples)
    model = _model(qwen2_dir)
    padded = PadCollator(tokenizer.pad_token_id)(samples)
    prompts = [s['input_ids'][:5 + i] for i, s in enumerate(samples[:3])]
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def outputs():
        with torch.no_grad():
            loss = _loss_and_grads(model, padded, n_items, grads=False)[0]
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return loss, gen.tolist()

    before = outputs()
    assert enable_varlen_attention(model)
    assert outputs() == before
    disable_varlen_attention(model)
    assert model.config._attn_implementation == 'sdpa'

    # a sliding window shorter than the longest sample: the masked path (which applies the window) is taken
    layers = model.config.num_hidden_layers
    windowed = _model(qwen2_dir, use_sliding_window=True, sliding_window=8, layer_types=['sliding_attention'] * layers)
    batch = PaddingFreeCollator()(samples)
    masked = _loss_and_grads(windowed, batch, n_items)[0]
    assert abs(masked - _loss_and_grads(model, batch, n_items)[0]) > 1e-4  # the window matters on these samples
    assert enable_varlen_attention(windowed)
    assert _loss_and_grads(windowed, batch, n_items)[0] == pytest.approx(masked, rel=1e-6)


def test_sft_trains_with_per_sample_attention_and_saves_a_plain_checkpoint(tmp_path, qwen2_dir, chat_file, capsys):
    from lmforge import sft

    out = tmp_path / 'out'
    result = sft(model=qwen2_dir, dataset=[chat_file], tuner_type='full', output_dir=str(out), max_steps=4,
                 per_device_train_batch_size=4, logging_steps=1, save_steps=4, report_to=['none'],
                 gradient_checkpointing=False, torch_dtype='float32', max_length=64)
    assert 'attention per sample' in capsys.readouterr().out
    with open(os.path.join(result['last_checkpoint'], 'config.json')) as f:
        config = json.load(f)
    assert NAME not in json.dumps(config)  # the checkpoint loads anywhere, with any attention
    _model(result['last_checkpoint'])
