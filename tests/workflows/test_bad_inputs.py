"""Bad input: a clear message naming what and where, exit code 2, no traceback, nothing half-written."""
import os
import subprocess
import sys

from tests.conftest import REPO, chat_rows, write_jsonl


def lmforge(*argv):
    return subprocess.run([sys.executable, '-m', 'lmforge', *argv], capture_output=True, text=True, cwd=REPO)


def check_error(result, *phrases):
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    for p in phrases:
        assert p in result.stderr, result.stderr


def test_missing_dataset_file(tmp_path, qwen2_dir):
    r = lmforge('sft', '--model', qwen2_dir, '--dataset', str(tmp_path / 'nope.jsonl'), '--output_dir',
                str(tmp_path / 'out'))
    check_error(r, 'nope.jsonl', 'file not found')
    assert not any(n.startswith('checkpoint') for n in os.listdir(tmp_path / 'out'))


def test_empty_dataset(tmp_path, qwen2_dir):
    (tmp_path / 'empty.jsonl').write_text('')
    r = lmforge('sft', '--model', qwen2_dir, '--dataset', str(tmp_path / 'empty.jsonl'), '--output_dir',
                str(tmp_path / 'out'))
    check_error(r, 'empty.jsonl', 'no rows')


def test_all_invalid_rows_fail_before_the_model_loads(tmp_path, qwen2_dir):
    path = tmp_path / 'bad.jsonl'
    path.write_text('{"messages": [{"role": "user", "content": "q"}]}\n{"foo": 1}\n')
    r = lmforge('sft', '--model', qwen2_dir, '--dataset', str(path), '--output_dir', str(tmp_path / 'out'))
    check_error(r, 'no usable training samples', f'{path}:1: messages: has no assistant message')
    assert 'trainable parameters' not in r.stdout  # the model was never loaded


def test_model_dir_without_config(tmp_path, chat_file):
    (tmp_path / 'model').mkdir()
    r = lmforge('sft', '--model', str(tmp_path / 'model'), '--dataset', chat_file, '--output_dir',
                str(tmp_path / 'out'))
    check_error(r, 'has no config.json')


def test_output_dir_holding_another_run_is_refused_unless_overwrite_or_resume(tmp_path, qwen2_dir, chat_file):
    out = tmp_path / 'out'
    common = ['--model', qwen2_dir, '--dataset', chat_file, '--output_dir', str(out), '--tuner_type', 'full',
              '--max_steps', '4', '--save_steps', '2', '--per_device_train_batch_size', '4',
              '--gradient_checkpointing', 'false', '--report_to', 'none', '--max_length', '64']
    first = lmforge('sft', *common)
    assert first.returncode == 0, first.stderr
    before = sorted(os.listdir(out))
    again = lmforge('sft', *common)
    check_error(again, '--output_dir', 'already holds a training run', '--overwrite_output_dir',
                '--resume_from_checkpoint latest')
    assert sorted(os.listdir(out)) == before  # nothing touched
    resumed = lmforge('sft', *common[:-12], '--tuner_type', 'full', '--max_steps', '6', '--save_steps', '2',
                      '--per_device_train_batch_size', '4', '--gradient_checkpointing', 'false', '--report_to',
                      'none', '--max_length', '64', '--resume_from_checkpoint', 'latest')
    assert resumed.returncode == 0, resumed.stderr
    assert os.path.isdir(out / 'checkpoint-6')
    replaced = lmforge('sft', *common, '--overwrite_output_dir', 'true')
    assert replaced.returncode == 0, replaced.stderr
    assert not os.path.exists(out / 'checkpoint-6')


def test_rows_over_max_length_are_counted_in_the_run_log(tmp_path, qwen2_dir):
    rows = chat_rows(16) + [{'messages': [{'role': 'user', 'content': 'x ' * 80},
                                          {'role': 'assistant', 'content': 'y'}]}] * 3
    data = write_jsonl(tmp_path / 'd.jsonl', rows)
    r = lmforge('sft', '--model', qwen2_dir, '--dataset', data, '--output_dir', str(tmp_path / 'out'),
                '--max_length', '48', '--max_steps', '1', '--report_to', 'none', '--tuner_type', 'full')
    assert r.returncode == 0, r.stderr
    assert '3 rows longer than --max_length 48: deleted' in r.stdout
