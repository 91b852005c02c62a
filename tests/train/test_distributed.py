"""Several processes through torchrun (gloo on CPU): the same objective as one process with the whole batch."""
import json
import os
import subprocess
import sys

import pytest

from lmforge.args import SftArgs, from_kwargs
from lmforge.errors import ArgumentError
from lmforge.train.distributed import torchrun_command
from tests.conftest import REPO, chat_rows, write_jsonl


def test_torchrun_command_from_the_environment():
    cmd = torchrun_command('sft', ['--model', 'm'], env={'NPROC_PER_NODE': '2'})
    assert cmd[1:] == ['-m', 'torch.distributed.run', '--nproc_per_node=2', '--nnodes=1', '--standalone', '-m',
                       'lmforge', 'sft', '--model', 'm']
    multi = torchrun_command('pt', [], env={'NPROC_PER_NODE': '8', 'NNODES': '2', 'NODE_RANK': '1',
                                            'MASTER_ADDR': '10.0.0.1', 'MASTER_PORT': '29501'})
    assert '--node_rank=1' in multi and '--master_addr=10.0.0.1' in multi and '--master_port=29501' in multi
    assert torchrun_command('sft', [], env={'NPROC_PER_NODE': '2', 'LOCAL_RANK': '0'}) is None  # already launched
    assert torchrun_command('infer', [], env={'NPROC_PER_NODE': '2'}) is None
    assert torchrun_command('sft', [], env={}) is None
    with pytest.raises(ArgumentError, match='MASTER_ADDR'):
        torchrun_command('sft', [], env={'NNODES': '2'})


def test_impossible_combinations_are_refused():
    with pytest.raises(ArgumentError, match='--fsdp: and --deepspeed'):
        from_kwargs(SftArgs, model='m', dataset=['d'], deepspeed='zero3', fsdp='full_shard')
    with pytest.raises(ArgumentError, match='--deepspeed'):
        from_kwargs(SftArgs, model='m', dataset=['d'], deepspeed='zero9')


def run(args, env=None):
    return subprocess.run([sys.executable, '-m', 'lmforge', 'sft', *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def losses(out):
    with open(os.path.join(out, 'logging.jsonl')) as f:
        return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_two_processes_train_the_same_objective_as_one_with_twice_the_batch(tmp_path, qwen2_dir):
    # 4 rows of different lengths and a global batch of 4: every step sees the whole data set whatever the sampler's
    # order, so equal losses mean an equal objective (token-averaged across processes, gradients all-reduced)
    rows = chat_rows(4)
    rows[0]['messages'][0]['content'] += ' and some more words to make this row longer'
    data = write_jsonl(tmp_path / 'four.jsonl', rows)
    common = ['--model', qwen2_dir, '--dataset', data, '--tuner_type', 'full', '--max_steps', '6',
              '--logging_steps', '1', '--save_steps', '6', '--learning_rate', '2e-3', '--max_length', '64',
              '--gradient_checkpointing', 'false', '--report_to', 'none', '--torch_dtype', 'float32']
    one = run(common + ['--output_dir', str(tmp_path / 'one'), '--per_device_train_batch_size', '4'])
    assert one.returncode == 0, one.stderr
    two = run(common + ['--output_dir', str(tmp_path / 'two'), '--per_device_train_batch_size', '2'],
              env={'NPROC_PER_NODE': '2', 'OMP_NUM_THREADS': '1'})
    assert two.returncode == 0, two.stderr[-3000:]
    assert 'launching: ' in two.stdout and 'torch.distributed.run --nproc_per_node=2' in two.stdout
    assert two.stdout.count('[lmforge] done:') == 1  # rank 0 speaks for all
    a, b = losses(tmp_path / 'one'), losses(tmp_path / 'two')
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:  # same samples per step, token-averaged loss across processes
        assert b[step] == pytest.approx(a[step], rel=1e-4), (step, a, b)
    assert os.path.isfile(tmp_path / 'two' / 'checkpoint-6' / 'model.safetensors')
