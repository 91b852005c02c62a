"""Resume is exact, checkpoints are atomic, SIGTERM saves and stops, a diverging loss stops with the step named."""
import json
import os
import signal
import subprocess
import sys

from tests.conftest import REPO, wait_for

STEPS = 40


def command(model_dir, data, out, *extra):
    return [sys.executable, '-m', 'lmforge', 'sft', '--model', model_dir, '--dataset', data, '--output_dir', str(out),
            '--tuner_type', 'full', '--max_steps', str(STEPS), '--save_steps', '5', '--logging_steps', '1',
            '--per_device_train_batch_size', '4', '--learning_rate', '2e-3', '--max_length', '64',
            '--gradient_checkpointing', 'false', '--report_to', 'none', '--torch_dtype', 'float32', *extra]


def losses(out) -> dict:
    """step -> loss; for steps logged twice (killed, then resumed) the last record wins."""
    found = {}
    with open(os.path.join(out, 'logging.jsonl')) as f:
        for record in map(json.loads, f):
            if 'loss' in record:
                found[record['step']] = record['loss']
    return found


def start(cmd):
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)



def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, qwen2_dir, chat_file):
    reference = subprocess.run(command(qwen2_dir, chat_file, tmp_path / 'a'), cwd=REPO, capture_output=True,
                               text=True)
    assert reference.returncode == 0, reference.stderr
    expected = losses(tmp_path / 'a')
    assert sorted(expected) == list(range(1, STEPS + 1))

    out = tmp_path / 'b'
    proc = start(command(qwen2_dir, chat_file, out))
    wait_for(out / 'checkpoint-15', proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(out / f'checkpoint-{STEPS}'), 'the run ended before it could be killed'
    resumed = subprocess.run(command(qwen2_dir, chat_file, out, '--resume_from_checkpoint', 'latest'), cwd=REPO,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    got = losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):  # 64 rows / batch 4 = 16 steps an epoch: the run crosses two epochs
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])


def test_sigterm_saves_a_checkpoint_and_stops_cleanly(tmp_path, qwen2_dir, chat_file):
    out = tmp_path / 'c'
    proc = start(command(qwen2_dir, chat_file, out))
    wait_for(out / 'checkpoint-5', proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert 'SIGTERM received' in stdout and '--resume_from_checkpoint latest' in stdout
    state = json.load(open(out / 'trainer_state.json')) if os.path.exists(out / 'trainer_state.json') else None
    checkpoints = sorted(int(n.split('-')[1]) for n in os.listdir(out) if n.startswith('checkpoint-'))
    stopped_at = max(losses(out))
    assert stopped_at < STEPS and checkpoints[-1] == stopped_at, (checkpoints, stopped_at, state)
    assert os.path.isfile(out / f'checkpoint-{stopped_at}' / 'trainer_state.json')
    assert not os.path.exists(out / '.staging')


def test_diverging_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, qwen2_dir, chat_file):
    out = tmp_path / 'd'
    cmd = command(qwen2_dir, chat_file, out, '--save_steps', '1')
    cmd[cmd.index('--learning_rate') + 1] = '1e9'
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert 'Traceback' not in r.stderr
    assert 'the loss became' in r.stderr and 'at step' in r.stderr and 'learning rate too high' in r.stderr
    step = int(r.stderr.split('at step ')[1].split(';')[0])
    assert step > 1 and os.path.isfile(out / f'checkpoint-{step - 1}' / 'trainer_state.json')
    assert not os.path.exists(out / f'checkpoint-{step}')
