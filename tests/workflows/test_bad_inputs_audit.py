"""Bad inputs found by an audit of every command: each gets one clear line naming the flag, file or row, exit code
2, and no traceback. Most fail in argument validation, before any model or data loads."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, chat_rows, write_jsonl
from tests.conftest import cli_error as check_error


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / 'a_file'
    path.write_text('not a directory')
    return path


@pytest.fixture
def fake_adapter(tmp_path):
    path = tmp_path / 'fake_adapter'
    path.mkdir()
    (path / 'adapter_config.json').write_text('{}')
    return path


def sft(*extra, model='m', dataset='d.jsonl'):
    return ['sft', '--model', model, '--dataset', dataset, '--report_to', 'none', *extra]


# ------------------------------------------------------------------ flags: out of range, not finite, unknown names

@pytest.mark.parametrize('extra, phrases', [
    (['--warmup_steps', '-5'], ['--warmup_steps: must be >= 0, got -5']),
    (['--dataloader_num_workers', '-1'], ['--dataloader_num_workers: must be >= 0']),
    (['--weight_decay', '-0.1'], ['--weight_decay: must be >= 0']),
    (['--max_grad_norm', '-1'], ['--max_grad_norm: must be >= 0']),
    (['--learning_rate', 'nan'], ['--learning_rate: expected a finite number']),
    (['--num_train_epochs', 'inf'], ['--num_train_epochs: expected a finite number']),
    (['--optim', 'adamw_torchh'], ["--optim: unknown optimizer 'adamw_torchh'", "Did you mean 'adamw_torch'"]),
    (['--columns', '{"messages": 5}'], ['--columns:', "'messages': 5"]),
])
def test_sft_flag_values(capsys, extra, phrases):
    check_error(capsys, sft(*extra), *phrases)


def test_integers_with_leading_zeros_are_integers():
    from lmforge.args import SftArgs, parse_args

    assert parse_args(SftArgs, sft('--seed', '007')[1:]).seed == 7


def test_output_paths_that_cannot_be_created(capsys, tmp_path, a_file):
    check_error(capsys, sft('--output_dir', a_file), f'--output_dir: {a_file} is a file, not a directory')
    check_error(capsys, sft('--output_dir', a_file / 'sub'), 'cannot be created', f'{a_file} is a file')
    check_error(capsys, ['infer', '--model', 'm', '--val_dataset', 'd.jsonl', '--result_path', tmp_path],
                '--result_path:', 'is a directory; give a file path')
    check_error(capsys, ['infer', '--model', 'm', '--val_dataset', 'd.jsonl', '--result_path', a_file / 'r.jsonl'],
                '--result_path:', 'cannot be created')
    check_error(capsys, ['eval', '--model', 'm', '--eval_dataset', 'x.jsonl', '--eval_output_dir', a_file],
                '--eval_output_dir:', 'is a file')
    check_error(capsys, ['export', '--model', 'm', '--to_gguf', 'true', '--output_dir', a_file], '--output_dir:',
                'is a file')
    check_error(capsys, ['download', '--model', 'org/m', '--local_dir', a_file], '--local_dir:', 'is a file')
    check_error(capsys, ['demo', '--output_dir', a_file], '--output_dir:', 'is a file')


@pytest.mark.parametrize('text, phrases', [
    ('lora_rank: null\n', ['--lora_rank: needs a value (default: 8)']),
    ('report_to:\n', ['--report_to: needs a value']),
    ('tuner_type: null\n', ['--tuner_type: needs a value']),
    ('1: 2\n', ["unknown argument '1'", 'run.yaml']),
    ('template: {a: 1}\n', ['--template: expected a single value']),
    ('dataset: [[a, b]]\n', ['--dataset: expected a single value']),
])
def test_yaml_config_values(capsys, tmp_path, text, phrases):
    (tmp_path / 'run.yaml').write_text(text)
    check_error(capsys, sft('--config', tmp_path / 'run.yaml'), *phrases)


def test_adapters_that_are_not_adapter_checkpoints(capsys, tmp_path, qwen2_dir, fake_adapter):
    check_error(capsys, sft('--adapters', qwen2_dir), f'--adapters: {qwen2_dir} holds no adapter_config.json')
    check_error(capsys, sft('--adapters', tmp_path / 'nope'), '--adapters:', 'nope does not exist')
    check_error(capsys, sft('--adapters', fake_adapter), '--adapters:', 'adapter_config.json names no peft_type')
    (fake_adapter / 'adapter_config.json').write_text('{oops')
    check_error(capsys, sft('--adapters', fake_adapter), '--adapters:', 'adapter_config.json is not valid JSON')
    check_error(capsys, ['serve', '--model', qwen2_dir, '--adapters', f'a={fake_adapter}'], '--adapters:',
                'is not valid JSON')


def test_rlhf_model_flags_are_named(capsys, tmp_path):
    base = ['rlhf', '--model', 'm', '--dataset', 'd.jsonl']
    check_error(capsys, [*base, '--ref_model', tmp_path / 'nope'], '--ref_model:', 'does not exist')
    check_error(capsys, [*base, '--ref_model', tmp_path], '--ref_model:', 'has no config.json')
    check_error(capsys, [*base, '--rlhf_type', 'gkd', '--teacher_model', tmp_path / 'nope'], '--teacher_model:')
    check_error(capsys, [*base, '--rlhf_type', 'ppo', '--reward_model', tmp_path / 'nope'], '--reward_model:')


def test_estimate_on_bad_models(capsys, tmp_path, fake_adapter):
    check_error(capsys, ['estimate', '--model', tmp_path / 'nope'], '--model:', 'nope does not exist')
    (tmp_path / 'empty').mkdir()
    check_error(capsys, ['estimate', '--model', tmp_path / 'empty'], '--model:', 'has no config.json')
    check_error(capsys, ['estimate', '--model', fake_adapter], '--model:', 'is a LoRA checkpoint')
    check_error(capsys, ['estimate', '--model', 'm', '--gpu_memory', '-1'], '--gpu_memory:', 'must be positive')


# ------------------------------------------------------------------ data files and dataset registrations

def test_data_files_that_are_not_utf8_or_not_jsonl(capsys, tmp_path, qwen2_dir):
    out = ['--output_dir', tmp_path / 'out']
    latin1 = tmp_path / 'latin1.jsonl'
    latin1.write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": '
                       b'"x"}]}\n')
    check_error(capsys, sft(*out, model=qwen2_dir, dataset=latin1), f'{latin1}:1: row: not UTF-8 text (byte 0xe9')
    (tmp_path / 'latin1.json').write_bytes(b'[{"text": "ok"},\n {"text": "caf\xe9"}]')
    check_error(capsys, sft(*out, model=qwen2_dir, dataset=tmp_path / 'latin1.json'), 'latin1.json:2: not UTF-8')
    array = tmp_path / 'array.jsonl'
    array.write_text(json.dumps(chat_rows(3)))
    check_error(capsys, sft(*out, model=qwen2_dir, dataset=array), f'{array}:1:', 'a JSON array of rows')
    bom = write_jsonl(tmp_path / 'bom.jsonl', chat_rows(4))
    with open(bom, 'rb') as f:
        text = f.read()
    with open(bom, 'wb') as f:
        f.write(b'\xef\xbb\xbf' + text)
    from lmforge.data import read_dataset
    assert 'messages' in read_dataset(bom)[0].data  # a byte-order mark is no part of the first row


def test_infer_names_val_dataset(capsys, tmp_path):
    check_error(capsys, ['infer', '--model', 'm', '--val_dataset', tmp_path / 'nope.jsonl'],
                f'--val_dataset {tmp_path / "nope.jsonl"}: file not found')


@pytest.mark.parametrize('content, phrases', [
    ('model: [unclosed\n', ['not valid YAML']),
    (json.dumps({'mine': {'file_name': 5}}), ["'mine': file_name: expected a string, got 5"]),
    (json.dumps({'mine': {'file_name': 'd.jsonl', 'columns': {'prompt': ['a']}}}), ["'mine': columns: expected"]),
    (json.dumps([{'dataset_path': 5}]), ['item 0: dataset_path: expected a string']),
])
def test_custom_dataset_info_files(capsys, tmp_path, qwen2_dir, chat_file, content, phrases):
    info = tmp_path / ('info.yaml' if content.startswith('model') else 'info.json')
    info.write_text(content)
    check_error(capsys, sft('--custom_dataset_info', info, '--output_dir', tmp_path / 'out', model=qwen2_dir,
                            dataset=chat_file), f'--custom_dataset_info {info}:', *phrases)


def test_eval_task_yaml_that_is_not_yaml(capsys, tmp_path):
    task = tmp_path / 'task.yaml'
    task.write_text('task: [unclosed\n')
    check_error(capsys, ['eval', '--model', 'm', '--eval_dataset', task, '--eval_output_dir', tmp_path / 'ev'],
                f'--eval_dataset {task}: not a readable lm-eval task file')


# ------------------------------------------------------------------ broken model directories

@pytest.fixture
def broken_model(tmp_path, qwen2_dir):
    path = tmp_path / 'broken'
    shutil.copytree(qwen2_dir, path)
    return path


def test_corrupt_or_mismatched_weights(capsys, tmp_path, broken_model, chat_file, fake_adapter):
    infer = ['infer', '--val_dataset', f'{chat_file}#1', '--max_new_tokens', '1', '--result_path',
             tmp_path / 'r.jsonl']
    check_error(capsys, [*infer, '--model', broken_model, '--adapters', fake_adapter], '--adapters:',
                'names no peft_type')
    config = json.loads((broken_model / 'config.json').read_text())
    (broken_model / 'config.json').write_text(json.dumps({**config, 'intermediate_size': 96}))
    check_error(capsys, [*infer, '--model', broken_model], 'could not load the model weights',
                'shapes do not match its config.json')
    (broken_model / 'model.safetensors').write_bytes(b'garbage')
    check_error(capsys, [*infer, '--model', broken_model], 'could not load the model weights',
                'corrupt or incomplete')
    check_error(capsys, ['export', '--model', broken_model, '--to_gguf', 'true', '--output_dir', tmp_path / 'gguf'],
                '--to_gguf:', 'model.safetensors is not a readable safetensors file')
    assert not os.path.exists(tmp_path / 'r.jsonl')


def test_the_real_command_line(tmp_path):
    """One case end to end through `python -m lmforge`: exit code 2, one line on stderr, no traceback."""
    r = subprocess.run([sys.executable, '-m', 'lmforge', 'sft', '--model', 'm', '--dataset', 'd.jsonl',
                        '--warmup_steps', '-5'], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.strip() == 'lmforge sft: error: --warmup_steps: must be >= 0, got -5'


@pytest.mark.parametrize('backend', ['wandb', 'swanlab'])
def test_a_logging_backend_that_is_not_installed_is_refused_before_training(capsys, backend):
    import importlib.util
    if importlib.util.find_spec(backend):
        pytest.skip(f'{backend} is installed here')
    check_error(capsys, ['sft', '--model', 'm', '--dataset', 'd.jsonl', '--report_to', backend],
                f'--report_to: {backend} needs the {backend} package', f'lmforge[{backend}]')


@pytest.mark.parametrize('flag', ['ref_model', 'reward_model'])
def test_a_hub_id_for_a_second_model_that_is_not_cached_names_its_flag(capsys, monkeypatch, tmp_path, qwen2_dir, flag):
    from tests.rlhf.helpers import letter_pairs

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    kind, rows = ('dpo', letter_pairs(4, seed=1)) if flag == 'ref_model' else \
        ('ppo', [{'messages': [{'role': 'user', 'content': 'hi'}], 'solution': 'a'}] * 4)
    check_error(capsys, ['rlhf', '--rlhf_type', kind, '--model', qwen2_dir, '--use_hf', 'true',
                         '--dataset', write_jsonl(tmp_path / 'd.jsonl', rows), f'--{flag}', 'nosuch-org/nosuch-model',
                         '--output_dir', tmp_path / 'out', '--report_to', 'none'],
                f'--{flag}: nosuch-org/nosuch-model is not in the local Hugging Face cache')


def test_the_engine_api_checks_named_adapters_like_the_cli(qwen2_dir, fake_adapter):
    from lmforge.errors import ModelError
    from lmforge.infer.engine import PtEngine

    with pytest.raises(ModelError, match='names no peft_type'):
        PtEngine(qwen2_dir, named_adapters={'a': str(fake_adapter)}, device='cpu')


def test_lora_modules_to_save_that_match_nothing_are_refused(capsys, tmp_path, qwen2_dir, chat_file):
    check_error(capsys, ['sft', '--model', qwen2_dir, '--dataset', chat_file, '--modules_to_save', 'nosuch',
                         '--output_dir', tmp_path / 'out', '--report_to', 'none'],
                "--modules_to_save: 'nosuch' names no module of the model", 'lm_head')


def test_sft_continues_one_adapter_not_several(capsys, fake_adapter):
    check_error(capsys, sft('--adapters', fake_adapter, fake_adapter), '--adapters: continues training one LoRA '
                'adapter; got 2')
