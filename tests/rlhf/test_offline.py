"""Offline preference methods end to end: each raises the model's preference for the chosen answers on pairs it
was not trained on; the DPO loss of lmforge's pipeline is the DPO formula on lmforge's encodings; checkpoints are
lmforge checkpoints (atomic, with args/template/generation config) and the logs carry the methods' metrics."""
import json
import math
import os

import pytest

from lmforge import rlhf
from tests.conftest import write_jsonl
from tests.rlhf.helpers import FAST, letter_pairs, preference, train_logs

PAIR_METRICS = ('rewards/chosen', 'rewards/rejected', 'rewards/margins', 'rewards/accuracies')


@pytest.mark.parametrize('method', ['dpo', 'orpo', 'simpo', 'cpo', 'kto'])
def test_offline_method_raises_held_out_preference(tmp_path, rl_base_dir, tokenizer, method):
    data = write_jsonl(tmp_path / 'pairs.jsonl', letter_pairs(256, seed=1))
    held_out = letter_pairs(64, seed=99)  # other words
    out = tmp_path / 'out'
    result = rlhf(rlhf_type=method, model=rl_base_dir, dataset=[data], output_dir=str(out), max_steps=30,
                  learning_rate=5e-3, save_steps=20, **{k: v for k, v in FAST.items() if k != 'save_steps'})

    acc0, margin0 = preference(rl_base_dir, held_out)
    acc1, margin1 = preference(result['last_checkpoint'], held_out)
    assert margin1 > margin0 + 0.5 and acc1 > acc0 and acc1 >= 0.9, (method, acc0, margin0, acc1, margin1)

    logs = train_logs(out)
    wanted = ('rewards/chosen', 'rewards/rejected', 'rewards/margins', 'kl') if method == 'kto' else PAIR_METRICS
    for key in wanted + ('loss', 'learning_rate', 'tokens_per_second', 'peak_memory_mb', 'mfu'):
        assert key in logs[-1], (method, key, sorted(logs[-1]))
    assert logs[-1]['tokens_per_second'] > 0
    if method == 'dpo':  # zero-initialised LoRA: the policy is the reference, the first loss is ln 2
        assert logs[0]['loss'] == pytest.approx(math.log(2), abs=1e-4)
        assert logs[-1]['rewards/margins'] > 0

    ckpt = result['last_checkpoint']
    assert os.path.basename(ckpt) == 'checkpoint-30' and os.path.isdir(out / 'checkpoint-20')
    assert not os.path.exists(out / '.staging')
    files = set(os.listdir(ckpt))
    assert {'adapter_config.json', 'adapter_model.safetensors', 'args.json', 'chat_template.jinja',
            'generation_config.json', 'trainer_state.json', 'optimizer.pt'} <= files
    saved = json.load(open(os.path.join(ckpt, 'args.json')))
    assert saved['rlhf_type'] == method and saved['base_model_dir'] == rl_base_dir
    gen = json.load(open(os.path.join(ckpt, 'generation_config.json')))
    eos = gen['eos_token_id'] if isinstance(gen['eos_token_id'], list) else [gen['eos_token_id']]
    assert tokenizer.convert_tokens_to_ids('<|im_end|>') in eos


def test_dpo_loss_is_the_dpo_formula_on_lmforge_encodings(tmp_path, rl_base_dir, tokenizer):
    """The loss the pipeline computes for a batch equals -log sigmoid(beta * (policy - reference log-ratio
    difference)) written out with log-probs taken here, on the token ids lmforge's chat encoding labels."""
    import torch
    import torch.nn.functional as F

    from lmforge.args.parse import from_kwargs
    from lmforge.args.rlhf import RlhfArgs
    from lmforge.templates import IGNORE_INDEX, encode_chat
    from lmforge.workflows.rlhf import build_rlhf
    from tests.rlhf.helpers import answer_logprob

    pairs = letter_pairs(8, seed=3)
    data = write_jsonl(tmp_path / 'pairs.jsonl', pairs)
    args = from_kwargs(RlhfArgs, rlhf_type='dpo', model=rl_base_dir, dataset=[data], output_dir=str(tmp_path / 'o'),
                       beta=0.3, max_steps=1, **FAST)
    run = build_rlhf(args)
    trainer, model = run.trainer, run.model

    # the rows are exactly what lmforge's chat encoding trains: the prompt, then the labelled answer tokens
    for row, pair in zip(run.train_rows, pairs):
        for side in ('chosen', 'rejected'):
            enc = encode_chat(tokenizer, [{'role': 'user', 'content': pair['prompt']},
                                          {'role': 'assistant', 'content': pair[side]}])
            labelled = [t for t in enc['labels'] if t != IGNORE_INDEX]
            assert row[f'{side}_ids'] == labelled
            assert row['prompt_ids'] + labelled == enc['input_ids'][:len(row['prompt_ids']) + len(labelled)]
    # no "ref" adapter copy: the reference is the base with the adapter disabled
    assert list(model.peft_config) == ['default']

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(math.log(2), abs=1e-6)
        torch.manual_seed(0)
        for name, p in model.named_parameters():  # move the policy away from the reference
            if 'lora_B' in name:
                p.normal_(0, 0.05)
        loss = trainer.compute_loss(trainer.model, batch).item()

        model.eval()
        policy, reference = [], []
        for row in run.train_rows:
            policy.append([answer_logprob(model, row['prompt_ids'], row[k]) for k in ('chosen_ids', 'rejected_ids')])
            with model.disable_adapter():
                reference.append([answer_logprob(model, row['prompt_ids'], row[k])
                                  for k in ('chosen_ids', 'rejected_ids')])
    p, r = torch.tensor(policy), torch.tensor(reference)
    expected = -F.logsigmoid(0.3 * ((p[:, 0] - r[:, 0]) - (p[:, 1] - r[:, 1]))).mean().item()
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert abs(loss - math.log(2)) > 1e-3  # the check has teeth: the policy did move


def test_trl_would_also_train_the_newline_after_end_of_turn(tmp_path, rl_base_dir, tokenizer):
    """Why lmforge feeds TRL pre-tokenized rows: TRL's own tokenization of the same conversational pair gives the
    same prompt, but its completion runs on past <|im_end|> into the template's trailing newline, a token that
    `lmforge sft` never trains."""
    from datasets import Dataset
    from trl import DPOTrainer

    from lmforge.args.parse import from_kwargs
    from lmforge.args.rlhf import RlhfArgs
    from lmforge.workflows.rlhf import build_rlhf

    pair = letter_pairs(1, seed=4)[0]
    data = write_jsonl(tmp_path / 'pairs.jsonl', [pair])
    run = build_rlhf(from_kwargs(RlhfArgs, rlhf_type='dpo', model=rl_base_dir, dataset=[data],
                                 output_dir=str(tmp_path / 'o'), max_steps=1, **FAST))
    conversational = Dataset.from_list([{'prompt': [{'role': 'user', 'content': pair['prompt']}],
                                         'chosen': [{'role': 'assistant', 'content': pair['chosen']}],
                                         'rejected': [{'role': 'assistant', 'content': pair['rejected']}]}])
    theirs = DPOTrainer._prepare_dataset(run.trainer, conversational, tokenizer, run.trainer.args, 'probe')[0]
    ours = run.train_rows[0]
    newline = tokenizer('\n', add_special_tokens=False)['input_ids']
    assert theirs['prompt_ids'] == ours['prompt_ids']
    assert theirs['chosen_ids'] == ours['chosen_ids'] + newline
    assert theirs['rejected_ids'] == ours['rejected_ids'] + newline
