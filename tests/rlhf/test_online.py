"""Reward model, GRPO, PPO and GKD end to end on the tiny model."""
import json
import os

from lmforge import rlhf
from tests.conftest import chat_rows, write_jsonl
from tests.rlhf.helpers import FAST, expected_accuracy, letter_pairs, sum_prompts, train_logs

ONLINE_METRICS = ('reward', 'reward_std', 'kl', 'completions/mean_length')


def test_reward_model_ranks_held_out_pairs(reward_model_dir, rl_base_dir):
    """`rlhf --rlhf_type rm` trains a one-output head (LoRA + the head, saved with the adapter); loaded back as a
    reward function, it scores the chosen answers of new pairs above the rejected ones."""
    from lmforge.args.parse import from_kwargs
    from lmforge.args.rlhf import RlhfArgs
    from lmforge.workflows.rlhf import load_reward_model

    files = set(os.listdir(reward_model_dir))
    assert {'adapter_config.json', 'adapter_model.safetensors', 'args.json', 'chat_template.jinja'} <= files
    assert json.load(open(os.path.join(reward_model_dir, 'adapter_config.json')))['task_type'] == 'SEQ_CLS'
    logs = train_logs(os.path.dirname(reward_model_dir))
    assert {'accuracy', 'margin', 'mean_reward', 'tokens_per_second'} <= set(logs[-1])

    scorer = load_reward_model(reward_model_dir, from_kwargs(RlhfArgs, model='m', dataset=['d']), 'cpu')
    held_out = letter_pairs(32, seed=99)
    prompts = [[{'role': 'user', 'content': r['prompt']}] for r in held_out]
    chosen = scorer(prompts, [[{'role': 'assistant', 'content': r['chosen']}] for r in held_out])
    rejected = scorer(prompts, [[{'role': 'assistant', 'content': r['rejected']}] for r in held_out])
    wins = sum(c > r for c, r in zip(chosen, rejected)) / len(held_out)
    assert wins >= 0.9, (wins, chosen[:4], rejected[:4])


def test_grpo_accuracy_reward_raises_expected_reward(tmp_path, rl_base_dir):
    rows = sum_prompts()
    data = write_jsonl(tmp_path / 'sums.jsonl', rows)
    out = tmp_path / 'out'
    result = rlhf(rlhf_type='grpo', model=rl_base_dir, dataset=[data], reward_funcs=['accuracy'], output_dir=str(out),
                  max_steps=20, learning_rate=5e-3, num_generations=8, max_completion_length=4, temperature=1.0,
                  **{**FAST, 'per_device_train_batch_size': 16})
    before, after = expected_accuracy(rl_base_dir, rows), expected_accuracy(result['last_checkpoint'], rows)
    assert after > before + 0.08, (before, after)
    logs = train_logs(out)
    for key in ONLINE_METRICS + ('rewards/accuracy/mean', 'tokens_per_second', 'peak_memory_mb'):
        assert key in logs[-1], (key, sorted(logs[-1]))
    assert logs[0]['kl'] == 0.0 and logs[-1]['kl'] > 0  # the reference is the start (adapters disabled)


def test_ppo_with_reward_model_and_function_runs_and_logs(tmp_path, rl_base_dir, reward_model_dir):
    """TRL 1.16 has no PPOTrainer: lmforge's own PPO (value head, GAE, clipped losses) on the Trainer path."""
    from safetensors.torch import load_file

    prompts = [{'messages': [{'role': 'user', 'content': r['prompt']}], 'solution': r['chosen']}
               for r in letter_pairs(16, seed=5)]
    data = write_jsonl(tmp_path / 'prompts.jsonl', prompts)
    out = tmp_path / 'out'
    result = rlhf(rlhf_type='ppo', model=rl_base_dir, dataset=[data], reward_model=[reward_model_dir],
                  reward_funcs=['accuracy'], reward_weights=[1.0, 0.5], output_dir=str(out), max_steps=4,
                  learning_rate=5e-3, max_completion_length=4, num_ppo_epochs=2, num_mini_batches=2,
                  **{**FAST, 'logging_steps': 1, 'gradient_checkpointing': True})  # the default, through the value head
    logs = train_logs(out)
    assert len(logs) == 4
    for key in ONLINE_METRICS + ('rewards/accuracy/mean', f'rewards/{os.path.basename(reward_model_dir)}/mean',
                                 'policy/clipfrac', 'loss/policy', 'loss/value', 'tokens_per_second', 'mfu'):
        assert key in logs[-1], (key, sorted(logs[-1]))
    assert logs[0]['kl'] == 0.0  # first rollout: policy == reference
    ckpt = result['last_checkpoint']
    assert {'adapter_model.safetensors', 'value_head.safetensors', 'args.json',
            'generation_config.json'} <= set(os.listdir(ckpt))
    assert load_file(os.path.join(ckpt, 'value_head.safetensors'))['weight'].abs().sum() > 0  # the critic trained
    assert not os.path.exists(out / '.staging')


def test_gkd_distils_from_a_teacher_and_logs(tmp_path, rl_base_dir, qwen2_dir):
    data = write_jsonl(tmp_path / 'chat.jsonl', chat_rows(32, seed=3, task='last'))
    out = tmp_path / 'out'
    result = rlhf(rlhf_type='gkd', model=qwen2_dir, teacher_model=rl_base_dir, dataset=[data], output_dir=str(out),
                  max_steps=6, learning_rate=5e-3, lmbda=0.5, max_completion_length=4, tuner_type='full',
                  **{**FAST, 'per_device_train_batch_size': 4, 'logging_steps': 2})
    logs = train_logs(out)
    assert len(logs) == 4 and all(r['loss'] > 0 for r in logs)
    for key in ('completions/mean_length', 'tokens_per_second', 'grad_norm'):
        assert key in logs[-1], (key, sorted(logs[-1]))
    assert os.path.isfile(os.path.join(result['last_checkpoint'], 'model.safetensors'))
