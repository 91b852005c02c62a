"""Several processes through torchrun (gloo on CPU): each sample trained once per epoch, the same steps and losses as
one process with the whole batch, one set of checkpoints and logs, SIGTERM on any rank, two nodes, DPO and reward
models, FSDP2."""
import collections
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from lmforge.args import SftArgs, from_kwargs
from lmforge.errors import ArgumentError
from lmforge.train.distributed import torchrun_command
from tests.conftest import REPO, chat_rows, write_jsonl, wait_for


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


def refusal(capsys, argv):
    from lmforge.cli import main
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and 'launching' not in out and 'Traceback' not in err, (code, out, err)
    return err


@pytest.mark.skipif(importlib.util.find_spec('deepspeed') is not None, reason='deepspeed is installed')
def test_ddp_looks_for_unused_parameters_only_where_a_step_can_leave_some():
    from types import SimpleNamespace

    from transformers import Qwen2Config, Qwen2MoeConfig

    from lmforge.train.distributed import find_unused_parameters

    dense, moe = SimpleNamespace(config=Qwen2Config()), SimpleNamespace(config=Qwen2MoeConfig())
    args = SimpleNamespace(ddp_find_unused_parameters=None, lisa_activated_layers=0)
    assert find_unused_parameters(args, dense) is False
    assert find_unused_parameters(args, moe) is True  # experts no token was routed to
    assert find_unused_parameters(SimpleNamespace(ddp_find_unused_parameters=None, lisa_activated_layers=2), dense)
    assert find_unused_parameters(SimpleNamespace(ddp_find_unused_parameters=True, lisa_activated_layers=0), dense)
    assert find_unused_parameters(SimpleNamespace(ddp_find_unused_parameters=False, lisa_activated_layers=2),
                                  moe) is False  # the flag wins


def test_deepspeed_without_the_package_says_what_to_install(capsys, monkeypatch, qwen2_dir, chat_file):
    monkeypatch.setenv('NPROC_PER_NODE', '2')  # refused before the processes start, not once in each of them
    err = refusal(capsys, ['sft', '--model', qwen2_dir, '--dataset', chat_file, '--deepspeed', 'zero2'])
    assert '--deepspeed' in err and 'pip install "lmforge[deepspeed]"' in err


def test_sharding_setups_that_cannot_work_are_refused_naming_the_flags(capsys, monkeypatch, qwen2_dir, chat_file):
    import lmforge.models
    from lmforge.train.distributed import check_launch

    monkeypatch.setenv('NPROC_PER_NODE', '2')
    if not torch.cuda.is_available():  # accelerate would quietly train plain DDP instead
        err = refusal(capsys, ['sft', '--model', qwen2_dir, '--dataset', chat_file, '--fsdp', 'full_shard'])
        assert '--fsdp' in err and 'no GPU' in err and 'NPROC_PER_NODE=N alone' in err
    monkeypatch.setattr(lmforge.models, 'pick_device', lambda: 'cuda')  # the flag checks past the device check
    with pytest.raises(ArgumentError, match='--fsdp: shards the weights, and 8-bit bitsandbytes weights'):
        check_launch(from_kwargs(SftArgs, model='m', dataset=['d'], tuner_type='lora', quant_method='bnb',
                                 quant_bits=8, fsdp='full_shard'))


def run(args, env=None, command='sft'):
    return subprocess.run([sys.executable, '-m', 'lmforge', command, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def losses(out):
    with open(os.path.join(out, 'logging.jsonl')) as f:
        return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def trace(directory, rank):
    """The micro-batches and the final weight digests that LMFORGE_TRACE_SAMPLES recorded for one rank."""
    with open(os.path.join(directory, f'rank-{rank}.jsonl')) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if 'samples' in r], records[-1]['weights']


def file_digests(path):
    from safetensors.torch import load_file

    from lmforge.train.sharding import tensor_digest
    return {name: tensor_digest(t) for name, t in load_file(path).items()}


def test_two_processes_train_each_sample_once_per_epoch_like_one_process_with_the_whole_batch(tmp_path, qwen2_dir):
    # 10 rows, global batch 4: 3 steps an epoch, the last with 2 rows. accelerate alone would fill that last batch
    # with 2 rows from the start of the epoch (trained twice); lmforge pads it with empty samples instead.
    rows = chat_rows(10)
    rows[0]['messages'][0]['content'] += ' and some more words to make this row longer'
    data = write_jsonl(tmp_path / 'ten.jsonl', rows)
    common = ['--model', qwen2_dir, '--dataset', data, '--tuner_type', 'full', '--num_train_epochs', '2',
              '--logging_steps', '1', '--save_steps', '4', '--learning_rate', '2e-3', '--max_length', '64',
              '--gradient_checkpointing', 'false', '--report_to', 'none', '--torch_dtype', 'float32']
    one = run(common + ['--output_dir', str(tmp_path / 'one'), '--per_device_train_batch_size', '4'])
    assert one.returncode == 0, one.stderr
    traced = tmp_path / 'trace'
    two = run(common + ['--output_dir', str(tmp_path / 'two'), '--per_device_train_batch_size', '2'],
              env={'NPROC_PER_NODE': '2', 'OMP_NUM_THREADS': '1', 'LMFORGE_TRACE_SAMPLES': str(traced)})
    assert two.returncode == 0, two.stderr[-3000:]
    assert 'launching: ' in two.stdout and 'torch.distributed.run --nproc_per_node=2' in two.stdout
    assert 'find_unused_parameters=True' not in two.stderr and 'Warning' not in two.stderr  # quiet ranks

    # steps: ceil(10 / 4) = 3 an epoch, as on one process; the same loss at every step (token-averaged across
    # processes over the same samples)
    a, b = losses(tmp_path / 'one'), losses(tmp_path / 'two')
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), (step, a, b)
    assert b[6] < b[1]

    # every row once per epoch across the two ranks, none twice, none dropped
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(qwen2_dir)
    words = collections.Counter(re.search(r'letter: (\w+)', r['messages'][0]['content']).group(1) for r in rows)
    batches = {rank: trace(traced, rank)[0] for rank in (0, 1)}
    for rank in (0, 1):  # lockstep: one micro-batch per step on each rank
        assert [r['step'] for r in batches[rank]] == list(range(1, 7)), rank
    for epoch in (0, 1):
        seen = collections.Counter(
            re.search(r'letter: (\w+)', tok.decode(sample)).group(1)
            for rank in (0, 1) for r in batches[rank] if (r['step'] - 1) // 3 == epoch for sample in r['samples'])
        assert seen == words, (epoch, seen)
    assert sum(len(r['samples']) for r in batches[1] if r['step'] % 3 == 0) == 0  # rank 1's last batch: padding

    # the weights: bit-identical on both ranks, and what rank 0 saved; the same as one process up to rounding
    weights = {rank: trace(traced, rank)[1] for rank in (0, 1)}
    assert weights[0] == weights[1]
    saved = file_digests(tmp_path / 'two' / 'checkpoint-6' / 'model.safetensors')
    assert saved and all(weights[0][name] == digest for name, digest in saved.items())
    from safetensors.torch import load_file
    w1, w2 = load_file(tmp_path / 'one' / 'checkpoint-6' / 'model.safetensors'), \
        load_file(tmp_path / 'two' / 'checkpoint-6' / 'model.safetensors')
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4

    # one set of checkpoints (each rank's RNG state in it), each log line and log record once
    assert sorted(os.listdir(tmp_path / 'two')) == sorted(os.listdir(tmp_path / 'one'))
    ckpt = set(os.listdir(tmp_path / 'two' / 'checkpoint-6'))
    assert {'rng_state_0.pth', 'rng_state_1.pth', 'trainer_state.json', 'args.json'} <= ckpt
    for line in ('[lmforge] model:', '[lmforge] done:', '[lmforge] last checkpoint:'):
        assert two.stdout.count(line) == 1, line
    with open(tmp_path / 'two' / 'logging.jsonl') as f:
        steps = [r['step'] for r in map(json.loads, f) if 'loss' in r]
    assert steps == list(range(1, 7))

    # resuming inside the second epoch (checkpoint-4) sees that epoch's order again, empty samples included
    resumed = run(common + ['--output_dir', str(tmp_path / 'resumed'), '--per_device_train_batch_size', '2',
                            '--resume_from_checkpoint', str(tmp_path / 'two' / 'checkpoint-4')],
                  env={'NPROC_PER_NODE': '2', 'OMP_NUM_THREADS': '1'})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = losses(tmp_path / 'resumed')
    assert sorted(again) == [5, 6] and all(again[step] == pytest.approx(b[step], abs=1e-6) for step in again)
    assert file_digests(tmp_path / 'resumed' / 'checkpoint-6' / 'model.safetensors') == saved


def start(args, env, command='sft'):
    return subprocess.Popen([sys.executable, '-m', 'lmforge', command, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def worker(proc, rank: int, timeout=60):
    """The training process of ``rank`` among the launcher's descendants."""
    import psutil

    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.environ().get('RANK') == str(rank):
                    return child
            except psutil.Error:
                pass
        time.sleep(0.1)
    raise AssertionError(f'no rank {rank} process after {timeout} s')



def test_sigterm_on_rank_1_stops_every_rank_at_one_checkpoint_that_resumes(tmp_path, qwen2_dir, chat_file):
    import signal

    from lmforge.train.trainer import latest_checkpoint

    out = tmp_path / 'run'
    args = ['--model', qwen2_dir, '--dataset', chat_file, '--output_dir', str(out), '--tuner_type', 'full',
            '--max_steps', '300', '--save_steps', '5', '--logging_steps', '1', '--per_device_train_batch_size', '2',
            '--learning_rate', '2e-3', '--max_length', '64', '--gradient_checkpointing', 'false',
            '--report_to', 'none', '--torch_dtype', 'float32']
    env = {'NPROC_PER_NODE': '2', 'OMP_NUM_THREADS': '1'}
    proc = start(args, env)
    rank1 = worker(proc, 1)
    wait_for(out / 'checkpoint-5', proc)
    rank1.send_signal(signal.SIGTERM)  # rank 1 only: rank 0 hears of it through the step-end all-reduce
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count('SIGTERM received by rank 1') == 1
    stopped = int(re.search(r'stopped by SIGTERM at step (\d+)', stdout).group(1))
    assert 5 <= stopped < 300

    # one consistent checkpoint of that step: complete (both ranks' RNG states), in place, what "latest" picks
    checkpoints = sorted(int(n.split('-')[1]) for n in os.listdir(out) if n.startswith('checkpoint-'))
    assert checkpoints[-1] == stopped and not os.path.exists(out / '.staging'), checkpoints
    last = out / f'checkpoint-{stopped}'
    assert latest_checkpoint(str(out)) == str(last)
    assert {'model.safetensors', 'optimizer.pt', 'scheduler.pt', 'trainer_state.json', 'rng_state_0.pth',
            'rng_state_1.pth', 'args.json'} <= set(os.listdir(last))
    assert json.load(open(last / 'trainer_state.json'))['global_step'] == stopped
    assert max(losses(out)) == stopped  # no rank trained past the checkpoint

    # the same world size resumes from it; this time the launcher itself gets the SIGTERM (as Kubernetes stops a
    # pod): it passes it to the workers, which save and stop, and everything exits 0
    proc = start(args + ['--resume_from_checkpoint', 'latest'], env)
    nxt = (stopped // 5 + 1) * 5
    wait_for(out / f'checkpoint-{nxt}', proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert 'SIGTERM received by rank 0' in stdout and 'SIGTERM received by rank 1' in stdout
    again = int(re.search(r'stopped by SIGTERM at step (\d+)', stdout).group(1))
    assert nxt <= again < 300 and latest_checkpoint(str(out)) == str(out / f'checkpoint-{again}')
    assert {'rng_state_0.pth', 'rng_state_1.pth'} <= set(os.listdir(out / f'checkpoint-{again}'))
    assert sorted(losses(out)) == list(range(1, again + 1)) and not os.path.exists(out / '.staging')


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_pretrain_as_one_run(tmp_path, qwen2_dir):
    # `lmforge pt` launched twice, as on two machines sharing a file system: NNODES=2, NODE_RANK 0 and 1, one
    # process each; padded batches this time (the first test trains padding-free)
    words = [r['messages'][0]['content'].split(': ')[1] for r in chat_rows(7, seed=3)]
    data = write_jsonl(tmp_path / 'text.jsonl', [{'text': f'The word {w} ends here.'} for w in words])
    out, traced = tmp_path / 'run', tmp_path / 'trace'
    args = ['--model', qwen2_dir, '--dataset', data, '--output_dir', str(out), '--tuner_type', 'full',
            '--num_train_epochs', '2', '--save_steps', '100', '--logging_steps', '1', '--padding_free', 'false',
            '--per_device_train_batch_size', '2', '--learning_rate', '2e-3', '--max_length', '64',
            '--gradient_checkpointing', 'false', '--report_to', 'none', '--torch_dtype', 'float32']
    env = {'NNODES': '2', 'NPROC_PER_NODE': '1', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(free_port()),
           'OMP_NUM_THREADS': '1', 'LMFORGE_TRACE_SAMPLES': str(traced)}
    nodes = [start(args, {**env, 'NODE_RANK': str(rank)}, command='pt') for rank in (0, 1)]
    (out0, err0), (out1, err1) = (node.communicate(timeout=300) for node in nodes)
    assert nodes[0].returncode == 0 and nodes[1].returncode == 0, (err0[-2000:], err1[-2000:])
    assert '--nnodes=2 --node_rank=0 --master_addr=127.0.0.1' in out0 and '--node_rank=1' in out1
    # rank 0 speaks, saves and plots for the run; node 1 prints no log line and no progress bar
    assert out0.count('[lmforge] done: 4 steps') == 1 and '[lmforge] done' not in out1
    assert '[lmforge] model:' not in out1 and "'loss'" not in out1 and '%|' not in err1
    assert sorted(n for n in os.listdir(out) if n.startswith('checkpoint-')) == ['checkpoint-4']
    assert sorted(losses(out)) == [1, 2, 3, 4]  # ceil(7 / (2 x 2)) = 2 steps an epoch
    # every text once per epoch across the two nodes; the same weights on both
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(qwen2_dir)
    for epoch in (0, 1):
        seen = collections.Counter(re.search(r'word (\w+) ends', tok.decode(s)).group(1) for rank in (0, 1)
                                   for r in trace(traced, rank)[0] if (r['step'] - 1) // 2 == epoch
                                   for s in r['samples'])
        assert seen == collections.Counter(words), (epoch, seen)
    assert trace(traced, 0)[1] == trace(traced, 1)[1]


@pytest.mark.parametrize('kind', ['dpo', 'rm'])  # rm: a trained score head, whose padding rows are held at zeros
def test_pairs_on_two_processes_are_trained_once_like_one_process_with_the_whole_batch(tmp_path, qwen2_dir, kind):
    from safetensors.torch import load_file

    from lmforge import rlhf
    from tests.rlhf.helpers import letter_pairs

    # 7 pairs, 2 processes x 3 = one process x 6: 2 steps an epoch, the last with 1 pair. lmforge completes that
    # global batch with padding pairs (rank 0: the pair and two padding ones, rank 1: padding only) trained with no
    # gradient; accelerate alone would repeat 5 pairs from the start of the epoch.
    data = write_jsonl(tmp_path / 'pairs.jsonl', letter_pairs(7, seed=1))
    common = dict(rlhf_type=kind, model=qwen2_dir, dataset=[data], tuner_type='lora', lora_rank=8, num_train_epochs=2,
                  learning_rate=5e-3, logging_steps=1, save_steps=100, max_length=64, gradient_checkpointing=False,
                  report_to=['none'], torch_dtype='float32')
    one = rlhf(output_dir=str(tmp_path / 'one'), per_device_train_batch_size=6, **common)
    argv = []
    for key, value in common.items():
        argv += [f'--{key}', *(value if isinstance(value, list) else ['false' if value is False else str(value)])]
    two = run(argv + ['--output_dir', str(tmp_path / 'two'), '--per_device_train_batch_size', '3'],
              env={'NPROC_PER_NODE': '2', 'OMP_NUM_THREADS': '1'}, command='rlhf')
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('[lmforge] done:') == 1
    a, b = losses(one['output_dir']), losses(tmp_path / 'two')
    assert sorted(a) == sorted(b) == list(range(1, 5))
    assert b[3] < b[1]
    if kind == 'dpo':
        assert b[1] == pytest.approx(0.6931, abs=1e-3)  # LoRA starts as the reference: ln 2
    # full steps: per-process means of the pairs' losses, gradients averaged, the mean over the global batch. Step 3
    # also shows that step 2 (the single pair) updated the weights as on one process. Steps 2 and 4 log the padding
    # pairs' values too (their gradient is zero).
    for step in (1, 3):
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-6), (step, a, b)
    ckpt = tmp_path / 'two' / 'checkpoint-4'
    assert sorted(n for n in os.listdir(tmp_path / 'two') if n.startswith('checkpoint-')) == ['checkpoint-4']
    assert {'adapter_model.safetensors', 'rng_state_0.pth', 'rng_state_1.pth'} <= set(os.listdir(ckpt))
    w1 = load_file(os.path.join(one['output_dir'], 'checkpoint-4', 'adapter_model.safetensors'))
    w2 = load_file(ckpt / 'adapter_model.safetensors')
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4  # repeating 5 pairs: ~1e-2


@pytest.mark.gpu
@pytest.mark.parametrize('tuner', ['full', 'lora'])
def test_fsdp2_checkpoints_hold_consolidated_weights_that_transformers_and_peft_load(tmp_path, qwen2_dir, tuner):
    # accelerate runs FSDP on GPUs only (on CPU lmforge refuses --fsdp, see above); one process per GPU
    from transformers import AutoModelForCausalLM

    out = tmp_path / 'out'
    r = run(['--model', qwen2_dir, '--dataset', write_jsonl(tmp_path / 'd.jsonl', chat_rows(32)), '--output_dir',
             str(out), '--tuner_type', tuner, '--fsdp', 'full_shard', '--max_steps', '8', '--logging_steps', '1',
             '--save_steps', '100', '--per_device_train_batch_size', '4', '--learning_rate', '5e-3',
             '--max_length', '64', '--report_to', 'none', '--torch_dtype', 'float32'],
            env={'NPROC_PER_NODE': str(torch.cuda.device_count())})
    assert r.returncode == 0, r.stderr[-3000:]
    loss = losses(out)
    assert sorted(loss) == list(range(1, 9)) and loss[8] < loss[1]
    ckpt = str(out / 'checkpoint-8')
    base = AutoModelForCausalLM.from_pretrained(qwen2_dir)
    if tuner == 'full':  # whole tensors of the model's shapes, not one process's shard
        trained = AutoModelForCausalLM.from_pretrained(ckpt)
        shapes = {k: v.shape for k, v in base.state_dict().items()}
        assert {k: v.shape for k, v in trained.state_dict().items()} == shapes
        assert any(not torch.equal(base.state_dict()[k], v) for k, v in trained.state_dict().items())
    else:
        from peft import PeftModel
        adapted = PeftModel.from_pretrained(base, ckpt)
        lora_b = [p for n, p in adapted.named_parameters() if 'lora_B' in n]
        assert lora_b and all(p.shape[1] == 8 for p in lora_b) and any(p.abs().sum() > 0 for p in lora_b)
