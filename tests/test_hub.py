"""Model resolution: local directories, a pre-populated local Hugging Face cache (offline), clear errors."""
import os
import shutil
import subprocess
import sys

import pytest

from lmforge.errors import ModelError
from lmforge.hub import resolve_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = '0123456789abcdef0123456789abcdef01234567'


def populate_hf_cache(cache_root, repo_id: str, model_dir: str) -> str:
    """Lay a model out the way huggingface_hub's cache does: models--org--name/{refs/main, snapshots/<sha>/}."""
    repo = os.path.join(cache_root, 'hub', 'models--' + repo_id.replace('/', '--'))
    snap = os.path.join(repo, 'snapshots', SNAPSHOT)
    shutil.copytree(model_dir, snap)
    os.makedirs(os.path.join(repo, 'refs'), exist_ok=True)
    with open(os.path.join(repo, 'refs', 'main'), 'w') as f:
        f.write(SNAPSHOT)
    return snap


def run_cli(*argv, env):
    return subprocess.run([sys.executable, '-m', 'lmforge', *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env})


def test_local_directory(qwen2_dir):
    assert resolve_model(qwen2_dir) == os.path.abspath(qwen2_dir)


def test_directory_without_config_is_a_clear_error(tmp_path):
    (tmp_path / 'weights.bin').write_bytes(b'')
    with pytest.raises(ModelError, match='has no config.json'):
        resolve_model(str(tmp_path))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match='does not exist'):
        resolve_model(str(tmp_path / 'nope'))


def test_hf_cache_offline_resolves_and_missing_model_says_what_to_run(tmp_path, qwen2_dir):
    snap = populate_hf_cache(tmp_path, 'tiny-org/tiny-qwen2', qwen2_dir)
    env = {'HF_HOME': str(tmp_path), 'HF_HUB_OFFLINE': '1'}
    ok = run_cli('download', '--model', 'tiny-org/tiny-qwen2', '--use_hf', env=env)
    assert ok.returncode == 0, ok.stderr
    assert snap in ok.stdout
    missing = run_cli('download', '--model', 'tiny-org/absent', '--use_hf', env=env)
    assert missing.returncode == 2
    assert 'not in the local Hugging Face cache' in missing.stderr
    assert 'lmforge download --model tiny-org/absent --use_hf' in missing.stderr
    assert 'Traceback' not in missing.stderr


def test_infer_from_the_hf_cache_by_id(tmp_path, qwen2_dir):
    populate_hf_cache(tmp_path, 'tiny-org/tiny-qwen2', qwen2_dir)
    data = tmp_path / 'q.jsonl'
    data.write_text('{"messages": [{"role": "user", "content": "Last letter: abc"}]}\n')
    out = tmp_path / 'out.jsonl'
    r = run_cli('infer', '--model', 'tiny-org/tiny-qwen2', '--use_hf', '--val_dataset', str(data),
                '--result_path', str(out), '--max_new_tokens', '4',
                env={'HF_HOME': str(tmp_path), 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr
    assert out.read_text().count('\n') == 1
