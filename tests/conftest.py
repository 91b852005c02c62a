"""Shared fixtures: tiny models of real architectures with a ChatML BPE tokenizer trained here (no hub)."""
from __future__ import annotations

import json
import os
import random
import time

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
# The tiny test models' matmuls are too small to share among threads: one thread is several times faster on a
# 2-core machine, in this process and in the `lmforge` subprocesses the tests start.
os.environ.setdefault('OMP_NUM_THREADS', '1')
if 'LMFORGE_DATA_CACHE' not in os.environ:  # tokenized-dataset cache: per test session, never the user's
    import tempfile
    os.environ['LMFORGE_DATA_CACHE'] = tempfile.mkdtemp(prefix='lmforge-test-cache-')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, '..', 'shared'))


def chat_rows(n: int, seed: int = 0, task: str = 'last') -> list[dict]:
    """A small learnable chat task: 'Last letter: word' -> the word's last letter (or its first letter)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = ''.join(rng.choice('abcdefgh') for _ in range(rng.randint(3, 5)))
        answer = word[-1] if task == 'last' else word[0]
        rows.append({'messages': [{'role': 'user', 'content': f'{task.capitalize()} letter: {word}'},
                                  {'role': 'assistant', 'content': answer}]})
    return rows


def fact_rows(n: int) -> list[dict]:
    """Eight fixed question -> answer pairs, repeated: learnable by memory alone (what LoRA picks up fast)."""
    facts = [('Code for ' + a, b) for a, b in zip(['abc', 'bcd', 'cde', 'def', 'efg', 'fgh', 'ghb', 'hac'],
                                                 ['fed', 'gab', 'hhe', 'cab', 'bad', 'ace', 'dig', 'egg'])]
    return [{'messages': [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]}
            for q, a in (facts[i % len(facts)] for i in range(n))]


def write_jsonl(path, rows) -> str:
    with open(path, 'w', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps(r) + '\n')
    return str(path)


def run_cli(capsys, *argv) -> tuple[int, str]:
    """`lmforge ARGV` in this process (torch loads once per test session): the exit code and what it printed. An
    escaping exception fails the test."""
    from lmforge.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.err + out.out


def cli_error(capsys, argv, *phrases) -> str:
    """`lmforge ARGV` must fail as a user error: exit code 2, no traceback, a message holding each of ``phrases``."""
    code, text = run_cli(capsys, *argv)
    assert code == 2, text
    assert 'Traceback' not in text, text
    for p in phrases:
        assert p in text, text
    return text


def make_tokenizer():
    from lmforge.demo.build import CHATML_SPECIAL, DEMO_CHAT_TEMPLATE, build_tokenizer
    from lmforge.templates import render

    corpus_rows = chat_rows(200)
    probe = build_tokenizer([], CHATML_SPECIAL, vocab_size=300, chat_template=DEMO_CHAT_TEMPLATE,
                            eos_token='<|im_end|>', pad_token='<|endoftext|>')
    corpus = [render(probe, r['messages']) for r in corpus_rows] + ['The quick brown fox jumps over the lazy dog.'] * 5
    return build_tokenizer(corpus, CHATML_SPECIAL, vocab_size=320, chat_template=DEMO_CHAT_TEMPLATE,
                           eos_token='<|im_end|>', pad_token='<|endoftext|>', split_letters=True)


@pytest.fixture(scope='session', autouse=True)
def one_torch_thread():
    import torch

    torch.set_num_threads(1)


def pytest_runtest_setup(item):
    if item.get_closest_marker('gpu'):
        import torch
        if not torch.cuda.is_available():
            pytest.skip('needs a CUDA GPU')


@pytest.fixture(scope='session')
def tokenizer():
    return make_tokenizer()


def _model_dir(factory, tokenizer, arch: str):
    from lmforge.demo.build import build_model, save_model_dir

    path = factory.mktemp(f'tiny-{arch}')
    model = build_model(tokenizer, arch, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=128)
    return save_model_dir(str(path), model, tokenizer)


@pytest.fixture(scope='session')
def qwen2_dir(tmp_path_factory, tokenizer):
    return _model_dir(tmp_path_factory, tokenizer, 'qwen2')


@pytest.fixture(scope='session')
def llama_dir(tmp_path_factory, tokenizer):
    return _model_dir(tmp_path_factory, tokenizer, 'llama')


@pytest.fixture
def chat_file(tmp_path):
    return write_jsonl(tmp_path / 'chat.jsonl', chat_rows(64))


def _pretrained(factory, model_dir, name):
    """The tiny model after a short full fine-tune on the 'first letter' task: a base that has learned something,
    which is what LoRA adapts in practice (LoRA on random weights cannot sharpen a random frozen LM head)."""
    from lmforge import sft

    tmp = factory.mktemp(name)
    data = write_jsonl(tmp / 'first.jsonl', chat_rows(256, seed=5, task='first'))
    out = sft(model=model_dir, dataset=[data], tuner_type='full', max_steps=60, learning_rate=3e-3,
              per_device_train_batch_size=16, gradient_checkpointing=False, report_to=['none'], save_steps=1000,
              output_dir=str(tmp / 'out'), logging_steps=20)
    return out['last_checkpoint']


@pytest.fixture(scope='session')
def qwen2_trained_dir(tmp_path_factory, qwen2_dir):
    return _pretrained(tmp_path_factory, qwen2_dir, 'trained-qwen2')


@pytest.fixture(scope='session')
def llama_trained_dir(tmp_path_factory, llama_dir):
    return _pretrained(tmp_path_factory, llama_dir, 'trained-llama')


def wait_for(path, proc, timeout=120):
    """Wait until ``path`` exists while the subprocess ``proc`` runs (it must not exit first)."""
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.02)
