"""CLI flags == YAML keys == SDK kwargs; misspellings and invalid values are errors naming the flag."""
import dataclasses
import os
import subprocess
import sys
import time

import pytest

from lmforge.args import PtArgs, SftArgs, from_kwargs, parse_args, to_dict
from lmforge.errors import ArgumentError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lmforge(*argv, env=None):
    return subprocess.run([sys.executable, '-m', 'lmforge', *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})})


def test_cli_yaml_and_kwargs_give_the_same_arguments(tmp_path):
    flags = ['--model', 'm', '--dataset', 'a.jsonl', 'b.jsonl#10', '--lora_rank', '16', '--learning_rate', '2e-4',
             '--gradient_checkpointing', 'false', '--target_modules', 'q_proj', 'v_proj', '--columns', '{"q": "query"}']
    from_cli = parse_args(SftArgs, flags)
    config = tmp_path / 'run.yaml'
    config.write_text('model: m\ndataset: [a.jsonl, "b.jsonl#10"]\nlora_rank: 16\nlearning_rate: 2.0e-4\n'
                      'gradient_checkpointing: false\ntarget_modules: [q_proj, v_proj]\ncolumns: {q: query}\n')
    from_yaml = parse_args(SftArgs, ['--config', str(config)])
    from_sdk = from_kwargs(SftArgs, model='m', dataset=['a.jsonl', 'b.jsonl#10'], lora_rank=16, learning_rate=2e-4,
                           gradient_checkpointing=False, target_modules=['q_proj', 'v_proj'], columns={'q': 'query'})
    assert to_dict(from_cli) == to_dict(from_yaml) == to_dict(from_sdk)
    assert from_cli.lora_rank == 16 and from_cli.gradient_checkpointing is False
    assert from_cli.dataset == ['a.jsonl', 'b.jsonl#10']


def test_cli_flags_override_yaml(tmp_path):
    config = tmp_path / 'run.yaml'
    config.write_text('model: m\ndataset: [a.jsonl]\nlora_rank: 16\nnum_train_epochs: 2\n')
    args = parse_args(SftArgs, ['--config', str(config), '--lora_rank', '4'])
    assert args.lora_rank == 4 and args.num_train_epochs == 2.0


def test_defaults_follow_ms_swift_names():
    args = from_kwargs(SftArgs, model='m', dataset=['d.jsonl'])
    assert (args.tuner_type, args.lora_rank, args.lora_alpha, args.target_modules) == ('lora', 8, 32, ['all-linear'])
    assert args.lr == 1e-4
    assert from_kwargs(SftArgs, model='m', dataset=['d'], tuner_type='full').lr == 1e-5
    assert from_kwargs(PtArgs, model='m', dataset=['d']).tuner_type == 'full'
    names = {f.name for f in dataclasses.fields(SftArgs)}
    for name in ('model', 'model_type', 'dataset', 'val_dataset', 'split_dataset_ratio', 'tuner_type', 'lora_rank',
                 'lora_alpha', 'lora_dropout', 'target_modules', 'max_length', 'truncation_strategy', 'torch_dtype',
                 'num_train_epochs', 'max_steps', 'per_device_train_batch_size', 'gradient_accumulation_steps',
                 'learning_rate', 'lr_scheduler_type', 'warmup_ratio', 'weight_decay', 'output_dir', 'save_steps',
                 'save_total_limit', 'eval_steps', 'logging_steps', 'seed', 'system', 'gradient_checkpointing',
                 'attn_impl', 'report_to', 'resume_from_checkpoint', 'overwrite_output_dir', 'use_hf'):
        assert name in names


@pytest.mark.parametrize('kwargs, flag, words', [
    (dict(lora_rank=-1), 'lora_rank', 'positive'),
    (dict(dataset=[]), 'dataset', 'required'),
    (dict(max_steps=0, num_train_epochs=0), 'max_steps', 'num_train_epochs'),
    (dict(tuner_type='lorra'), 'tuner_type', "Did you mean 'lora'"),
    (dict(learning_rate=-1.0), 'learning_rate', 'positive'),
    (dict(split_dataset_ratio=1.5), 'split_dataset_ratio', '[0, 1)'),
    (dict(per_device_train_batch_size=0), 'per_device_train_batch_size', 'positive'),
    (dict(report_to=['tensorbord']), 'report_to', 'tensorbord'),
])
def test_invalid_values_name_the_flag(kwargs, flag, words):
    base = dict(model='m', dataset=['d.jsonl'])
    with pytest.raises(ArgumentError) as e:
        from_kwargs(SftArgs, **{**base, **kwargs})
    assert f'--{flag}' in str(e.value) and words in str(e.value)


def test_misspelled_kwarg_and_yaml_key_suggest_the_right_name(tmp_path):
    with pytest.raises(ArgumentError, match='Did you mean --lora_rank'):
        from_kwargs(SftArgs, model='m', dataset=['d'], lora_rnak=8)
    config = tmp_path / 'bad.yaml'
    config.write_text('model: m\ndataset: [d]\nlearning_rat: 1e-4\n')
    with pytest.raises(ArgumentError, match=r"learning_rat.*Did you mean --learning_rate"):
        parse_args(SftArgs, ['--config', str(config)])


def test_bad_type_is_named():
    with pytest.raises(ArgumentError, match='--lora_rank: expected an integer'):
        parse_args(SftArgs, ['--model', 'm', '--dataset', 'd', '--lora_rank', 'eight'])
    with pytest.raises(ArgumentError, match='--packing: expected true or false'):
        parse_args(SftArgs, ['--model', 'm', '--dataset', 'd', '--packing', 'maybe'])


def test_cli_misspelled_flag_exits_2_with_suggestion():
    r = lmforge('sft', '--model', 'm', '--dataset', 'd.jsonl', '--lora_rnak', '8')
    assert r.returncode == 2
    assert 'Did you mean --lora_rank' in r.stderr
    assert 'Traceback' not in r.stderr


def test_cli_unknown_command_suggests():
    r = lmforge('sfft')
    assert r.returncode == 2 and 'Did you mean `sft`' in r.stderr


def test_help_lists_every_flag_with_default_and_is_fast():
    t0 = time.perf_counter()
    r = lmforge('sft', '--help')
    took = time.perf_counter() - t0
    assert r.returncode == 0
    for f in dataclasses.fields(SftArgs):
        assert f'--{f.name}' in r.stdout
    assert '(default: 8)' in r.stdout and '(default: all-linear)' in r.stdout
    top = lmforge('--help')
    assert top.returncode == 0 and 'sft' in top.stdout and 'demo' in top.stdout
    # lazy imports: --help must not pull in torch/transformers
    code = ('import sys, lmforge.cli\ntry:\n    lmforge.cli.main(["sft", "--help"])\nexcept SystemExit:\n    pass\n'
            'print("torch" in sys.modules, "transformers" in sys.modules)')
    probe = subprocess.run([sys.executable, '-c', code],
                           capture_output=True, text=True, cwd=REPO)
    assert probe.stdout.strip().endswith('False False')
    assert took < 5  # generous for a loaded CI machine; ~0.1 s here


@pytest.mark.parametrize('name, cls', [('sft_lora.yaml', SftArgs), ('pt_full.yaml', PtArgs)])
def test_example_configs_parse(name, cls):
    args = parse_args(cls, ['--config', os.path.join(REPO, 'examples', name)])
    assert args.model and args.dataset


def test_sdk_names_stay_functions_after_their_packages_are_imported():
    code = ('import lmforge.infer.engine, lmforge.serve.app, lmforge.export, lmforge.eval, lmforge.rlhf, '
            'lmforge.demo.build\nimport lmforge\n'
            'print(all(callable(getattr(lmforge, n)) for n in lmforge.__all__ if n != "__version__"))')
    probe = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert probe.stdout.strip() == 'True', probe.stderr
