"""SFT and PT end to end on tiny random models: the loss falls, checkpoints are complete and reload in
transformers/peft, and the trained model answers and stops."""
import json
import os

import pytest

from lmforge import pt, sft
from tests.conftest import fact_rows, write_jsonl

COMMON = dict(per_device_train_batch_size=8, logging_steps=5, gradient_checkpointing=False, report_to=['none'],
              max_length=64, overwrite_output_dir=True)


def logged_losses(output_dir):
    with open(os.path.join(output_dir, 'logging.jsonl')) as f:
        return [r['loss'] for r in map(json.loads, f) if 'loss' in r]


@pytest.mark.parametrize('arch', ['qwen2', 'llama'])
@pytest.mark.parametrize('tuner', ['lora', 'full'])
def test_sft_learns_and_checkpoint_reloads(request, tmp_path, chat_file, tokenizer, arch, tuner):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    # LoRA adapts a model that has learned something (see conftest._pretrained); full trains the random one
    model_dir = request.getfixturevalue(f'{arch}_trained_dir' if tuner == 'lora' else f'{arch}_dir')
    out = tmp_path / 'out'
    lr = 1e-2 if tuner == 'lora' else 3e-3
    data = write_jsonl(tmp_path / 'facts.jsonl', fact_rows(64)) if tuner == 'lora' else chat_file
    result = sft(model=model_dir, dataset=[data], tuner_type=tuner, max_steps=30, learning_rate=lr,
                 lora_rank=16, output_dir=str(out), save_steps=20, warmup_ratio=0.2, **COMMON)
    losses = logged_losses(out)
    # a hidden-64 model with a frozen tied LM head cannot sharpen its logits far with adapters alone
    assert losses[-1] < (0.88 if tuner == 'lora' else 0.6) * losses[0], losses

    ckpt = result['last_checkpoint']
    assert os.path.basename(ckpt) == 'checkpoint-30' and os.path.isdir(out / 'checkpoint-20')
    files = set(os.listdir(ckpt))
    assert {'args.json', 'chat_template.jinja', 'generation_config.json', 'trainer_state.json',
            'tokenizer.json', 'optimizer.pt', 'scheduler.pt'} <= files
    assert ('adapter_config.json' in files) == (tuner == 'lora')
    assert not os.path.exists(out / '.staging')
    saved_args = json.load(open(os.path.join(ckpt, 'args.json')))
    assert saved_args['tuner_type'] == tuner and saved_args['base_model_dir'] == os.path.abspath(model_dir)
    gen = GenerationConfig.from_pretrained(ckpt)
    im_end = tokenizer.convert_tokens_to_ids('<|im_end|>')
    assert im_end in (gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id])

    # the checkpoint loads with plain transformers / peft and generates
    if tuner == 'lora':
        from peft import PeftModel
        from safetensors.torch import load_file
        adapter = load_file(os.path.join(ckpt, 'adapter_model.safetensors'))
        assert adapter and all('lora_' in k for k in adapter)  # only adapter weights are saved
        assert any(v.abs().sum() > 0 for k, v in adapter.items() if 'lora_B' in k)  # B starts at zero: it trained
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), ckpt)
    else:
        model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.chat_template == tokenizer.chat_template
    prompt = tok.apply_chat_template([{'role': 'user', 'content': 'Last letter: abc'}], add_generation_prompt=True,
                                     return_tensors='pt', return_dict=True)
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=5, generation_config=gen)
    assert ids.shape[1] > prompt['input_ids'].shape[1]

    records = [json.loads(line) for line in open(out / 'logging.jsonl')]
    train_logs = [r for r in records if 'loss' in r]
    for key in ('step', 'loss', 'learning_rate', 'grad_norm', 'tokens_per_second', 'peak_memory_mb', 'mfu'):
        assert key in train_logs[-1], key
    assert os.path.isfile(out / 'loss.png')


def test_trained_model_answers_and_stops_on_end_of_turn(tmp_path, qwen2_dir, tokenizer):
    from lmforge import infer

    train = write_jsonl(tmp_path / 'train.jsonl', fact_rows(256))
    questions = write_jsonl(tmp_path / 'test.jsonl', fact_rows(8))
    result = sft(model=qwen2_dir, dataset=[train], tuner_type='full', max_steps=150, learning_rate=5e-3,
                 output_dir=str(tmp_path / 'out'), save_steps=1000, warmup_ratio=0.1,
                 **{**COMMON, 'per_device_train_batch_size': 16})
    out = infer(model=result['last_checkpoint'], val_dataset=[questions], result_path=str(tmp_path / 'pred.jsonl'),
                max_new_tokens=20)
    lines = [json.loads(line) for line in open(tmp_path / 'pred.jsonl')]
    assert len(lines) == len(out) == 8
    # generation stops right after the answer's tokens, on <|im_end|>, not at max_new_tokens
    for r in lines:
        assert r['finish_reason'] == 'stop', r
        assert r['completion_tokens'] == len(tokenizer(r['labels'], add_special_tokens=False)['input_ids']) + 1, r
    assert [r['response'] for r in lines] == [r['labels'] for r in lines]


def test_pt_learns_on_plain_text_with_packing(tmp_path, qwen2_dir):
    text = ['the cat sat on the mat. ' * 3, 'a dog ran in the park. ' * 3] * 40
    data = write_jsonl(tmp_path / 'text.jsonl', [{'text': t} for t in text])
    out = tmp_path / 'pt'
    result = pt(model=qwen2_dir, dataset=[data], max_steps=25, learning_rate=3e-3, output_dir=str(out),
                save_steps=1000, packing=True, **{**COMMON, 'max_length': 128, 'per_device_train_batch_size': 2})
    losses = logged_losses(out)
    assert losses[-1] < 0.5 * losses[0], losses
    assert os.path.isfile(os.path.join(result['last_checkpoint'], 'model.safetensors'))


def test_validation_loss_is_computed_during_training(tmp_path, qwen2_dir, chat_file):
    out = tmp_path / 'eval'
    sft(model=qwen2_dir, dataset=[chat_file], tuner_type='full', max_steps=10, learning_rate=3e-3,
        split_dataset_ratio=0.25, eval_steps=5, save_steps=1000, output_dir=str(out), **COMMON)
    with open(out / 'logging.jsonl') as f:
        evals = [r for r in map(json.loads, f) if 'eval_loss' in r]
    assert [r['step'] for r in evals] == [5, 10]
    assert evals[1]['eval_loss'] < evals[0]['eval_loss']
