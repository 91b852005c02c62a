"""--predict_with_generate: exact match / BLEU / ROUGE-L of the model being trained at each evaluation, logged as
eval_* metrics, the answers in predictions.jsonl; the same numbers `lmforge eval` gets from the checkpoint."""
import glob
import json
import os

import pytest

from lmforge import sft
from lmforge.args import PtArgs, SftArgs, from_kwargs
from lmforge.errors import ArgumentError
from tests.conftest import chat_rows, fact_rows, write_jsonl

COMMON = dict(logging_steps=10, report_to=['none'], max_length=64, predict_with_generate=True, max_new_tokens=8)


def records(out) -> list[dict]:
    with open(os.path.join(out, 'logging.jsonl')) as f:
        return list(map(json.loads, f))


@pytest.fixture(scope='module')
def facts_run(tmp_path_factory, qwen2_dir):
    """A full fine-tune of the random model on eight facts, evaluated with generation at steps 40, 80 and 120."""
    tmp = tmp_path_factory.mktemp('facts')
    train = write_jsonl(tmp / 'train.jsonl', fact_rows(256))
    val = write_jsonl(tmp / 'val.jsonl', fact_rows(8))
    out = tmp / 'out'
    result = sft(model=qwen2_dir, dataset=[train], val_dataset=[val], tuner_type='full', max_steps=120,
                 learning_rate=5e-3, warmup_ratio=0.1, per_device_train_batch_size=16, gradient_checkpointing=False,
                 eval_steps=40, save_steps=40, eval_generate_limit=6, per_device_eval_batch_size=4,
                 metric_for_best_model='exact_match', output_dir=str(out), **{**COMMON, 'report_to': ['tensorboard']})
    return out, result


def test_generation_metrics_rise_while_training(facts_run, tokenizer):
    from lmforge.templates import render_prompt

    out, result = facts_run
    val_rows = fact_rows(8)
    evals = [r for r in records(out) if 'eval_loss' in r]
    assert [r['step'] for r in evals] == [40, 80, 120]
    first, last = evals[0], evals[-1]
    assert {'eval_exact_match', 'eval_bleu', 'eval_rouge_l'} <= set(last)
    assert last['eval_exact_match'] >= 0.8 and last['eval_exact_match'] >= first['eval_exact_match'] + 0.3, evals
    assert last['eval_rouge_l'] >= first['eval_rouge_l'] + 0.3, evals

    # the answers of the final evaluation: the first 6 validation rows (--eval_generate_limit), prompted as
    # `lmforge infer` prompts, scored per row
    rows = [json.loads(line) for line in open(out / 'predictions.jsonl', encoding='utf-8')]
    assert len(rows) == 6 and {r['step'] for r in rows} == {120}
    for row, source in zip(rows, val_rows):
        assert row['prompt'] == render_prompt(tokenizer, source['messages'][:-1])
        assert row['reference'] == source['messages'][-1]['content']
        assert row['exact_match'] == float(row['response'] == row['reference'])
    assert sum(r['exact_match'] for r in rows) / 6 == pytest.approx(last['eval_exact_match'], abs=1e-4)

    # in trainer_state.json, picking the best checkpoint, and in TensorBoard
    state = json.load(open(os.path.join(result['last_checkpoint'], 'trainer_state.json')))
    logged = [h for h in state['log_history'] if 'eval_exact_match' in h]
    assert [h['step'] for h in logged] == [40, 80, 120]
    best = max(logged, key=lambda h: h['eval_exact_match'])  # the first step reaching the highest value
    assert state['best_metric'] == best['eval_exact_match']
    assert state['best_model_checkpoint'] == str(out / f'checkpoint-{best["step"]}')
    assert os.path.isdir(state['best_model_checkpoint'])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(os.path.dirname(glob.glob(str(out / 'runs' / '*' / 'events.*'))[0]))
    events.Reload()
    scalars = events.Scalars('eval/exact_match')
    assert [s.step for s in scalars] == [40, 80, 120]
    assert scalars[-1].value == pytest.approx(last['eval_exact_match'])


def test_lora_answers_equal_lmforge_eval_on_the_checkpoint(tmp_path, facts_run):
    """LoRA with gradient checkpointing: the answers generated inside training (the training model, switched to eval
    mode and back) are those `lmforge eval` gives for the saved checkpoint on the same rows, and so are the metrics;
    prompts of different lengths share left-padded batches. The base knows the facts, so its answers differ from
    prompt to prompt: a prompt built differently from `lmforge eval`'s would change them."""
    from lmforge import eval as evaluate

    base = facts_run[1]['last_checkpoint']
    train = write_jsonl(tmp_path / 'train.jsonl', fact_rows(64))
    val = write_jsonl(tmp_path / 'val.jsonl', fact_rows(5) + chat_rows(3, seed=9))  # prompts of 3 lengths
    out = tmp_path / 'lora'
    result = sft(model=base, dataset=[train], val_dataset=[val], tuner_type='lora', lora_rank=8,
                 max_steps=4, learning_rate=1e-3, per_device_train_batch_size=8, gradient_checkpointing=True,
                 eval_steps=2, save_steps=1000, per_device_eval_batch_size=3, output_dir=str(out),
                 **{**COMMON, 'logging_steps': 1})
    evals = [r for r in records(out) if 'eval_loss' in r]
    assert [r['step'] for r in evals] == [2, 4]  # trained on after the first evaluation
    ours = [json.loads(line) for line in open(out / 'predictions.jsonl', encoding='utf-8')]

    report = evaluate(model=result['last_checkpoint'], eval_dataset=[val], eval_output_dir=str(tmp_path / 'eval'),
                      max_new_tokens=COMMON['max_new_tokens'], max_batch_size=3)
    theirs = [json.loads(line) for line in open(os.path.join(os.path.dirname(report['report_path']),
                                                             'predictions_val.jsonl'), encoding='utf-8')]
    assert [r['response'] for r in ours] == [r['response'] for r in theirs]
    assert [r['reference'] for r in ours] == [r['reference'] for r in theirs]
    assert len({r['response'] for r in ours}) >= 4, ours  # answers that depend on the prompt
    for name, value in report['results']['val'].items():
        assert evals[-1][f'eval_{name}'] == pytest.approx(value, abs=1e-4), name


def test_answering_restores_the_training_mode(qwen2_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.templates import encode_chat, stop_token_ids
    from lmforge.train.generate_eval import GenerateEval, questions_of

    model = AutoModelForCausalLM.from_pretrained(qwen2_dir)
    samples = [encode_chat(tokenizer, r['messages']) for r in chat_rows(3)]
    questions = questions_of(samples, tokenizer)
    assert [q.reference for q in questions] == [r['messages'][-1]['content'] for r in chat_rows(3)]
    assert len(questions_of(samples, tokenizer, limit=2)) == 2
    ev = GenerateEval(questions, tokenizer, stop_token_ids(tokenizer), max_new_tokens=3, batch_size=2,
                      output_dir='/nonexistent')
    for training in (True, False):
        model.train(training)
        answers = ev.answer(model, questions)
        assert model.training is training and len(answers) == 3
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize('kwargs,flag,match', [
    (dict(predict_with_generate=True), 'predict_with_generate', '--val_dataset FILE or --split_dataset_ratio'),
    (dict(predict_with_generate=True, split_dataset_ratio=0.1, fsdp='full_shard'), 'fsdp', 'shards the weights'),
    (dict(predict_with_generate=True, split_dataset_ratio=0.1, deepspeed='zero3'), 'deepspeed', 'shards'),
    (dict(predict_with_generate=True, split_dataset_ratio=0.1, eval_generate_limit=0), 'eval_generate_limit',
     'positive'),
    (dict(split_dataset_ratio=0.1, metric_for_best_model='bleu'), 'metric_for_best_model',
     'need --predict_with_generate'),
    (dict(metric_for_best_model='loss'), 'metric_for_best_model', 'needs validation data'),
    (dict(split_dataset_ratio=0.1, predict_with_generate=True, metric_for_best_model='acc'), 'metric_for_best_model',
     'exact_match | bleu | rouge_l'),
])
def test_bad_flags_are_named(kwargs, flag, match):
    with pytest.raises(ArgumentError, match=match) as e:
        from_kwargs(SftArgs, model='m', dataset=['d'], **kwargs)
    assert e.value.flag == flag


def test_pt_and_rlhf_refuse_predict_with_generate():
    from lmforge.args.rlhf import RlhfArgs

    for cls, command in ((PtArgs, 'pt'), (RlhfArgs, 'rlhf')):
        with pytest.raises(ArgumentError, match=f'for lmforge sft, not lmforge {command}'):
            from_kwargs(cls, model='m', dataset=['d'], predict_with_generate=True, val_dataset=['v'])


def test_no_validation_sample_held_out_is_named(tmp_path, qwen2_dir):
    one = write_jsonl(tmp_path / 'one.jsonl', chat_rows(1))
    with pytest.raises(ArgumentError, match='--split_dataset_ratio 0.1 held none out') as e:
        sft(model=qwen2_dir, dataset=[one], split_dataset_ratio=0.1, output_dir=str(tmp_path / 'o'), **COMMON)
    assert e.value.flag == 'predict_with_generate'
