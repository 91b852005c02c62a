"""Shared by the template tests: the chat-template fixtures and small BPE tokenizers that know their special tokens.

The fixtures live in ../shared/fixtures/chat_templates next to the repository (CI has them there too); the tests that
need them are skipped cleanly when that directory is absent.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lmforge.templates import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / '..' / 'shared' / 'fixtures' / 'chat_templates'
HAVE_FIXTURES = (FIXTURES / 'render_results.json').is_file()
needs_fixtures = pytest.mark.skipif(not HAVE_FIXTURES, reason=f'chat template fixtures not found at {FIXTURES}')


def fixture_names() -> list[str]:
    if not HAVE_FIXTURES:
        return []
    return sorted(p.stem for p in FIXTURES.glob('*.json') if p.name != 'render_results.json')


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / f'{name}.json').read_text(encoding='utf-8'))


_RESULTS: dict = {}


def results(name: str) -> dict:
    """The facts validate.py recorded for a fixture (render_results.json ``summary`` + ``results``)."""
    if not _RESULTS:
        _RESULTS.update(json.loads((FIXTURES / 'render_results.json').read_text(encoding='utf-8')))
    return {**_RESULTS['results'][name], **_RESULTS['summary'][name]}


# Every text the tests put in a conversation, so that the BPE learns real merges on them.
CORPUS = ['What is 2+2? It is 4. And 3+3? It is 6. Hello there! How are you? I am fine, thanks.',
          'Be brief. You are a helpful assistant. Weather in Paris? It is 21C and sunny. get_weather city Paris',
          'I should add the numbers. Two plus two is four. Greet them back.'] * 4

_TOKENIZERS: dict[str, object] = {}


def fixture_tokenizer(name: str):
    """A fresh tokenizer with the fixture's special tokens and its chat template as shipped (trained once per name,
    copied per call so that tests may change it)."""
    if name not in _TOKENIZERS:
        from lmforge.demo.build import build_tokenizer

        fx = load_fixture(name)
        tok = build_tokenizer(CORPUS, fx.get('special_tokens') or [], vocab_size=400,
                              chat_template=fx['chat_template'], eos_token=fx.get('eos_token'),
                              bos_token=fx.get('bos_token'), pad_token=fx.get('pad_token'),
                              unk_token=fx.get('unk_token'))
        tok.name_or_path = name
        _TOKENIZERS[name] = tok
    return copy.deepcopy(_TOKENIZERS[name])


def applied_tokenizer(name: str):
    """`fixture_tokenizer` after `apply_template` (the named fix installed where one applies)."""
    from lmforge.templates import apply_template

    tok = fixture_tokenizer(name)
    apply_template(tok)
    return tok


def labelled_runs(tokenizer, sample) -> list[str]:
    """The decoded runs of consecutive labelled tokens of a sample (one per trained turn)."""
    runs, cur = [], []
    for tid, label in zip(sample.input_ids, sample.labels):
        assert label in (IGNORE_INDEX, tid), 'a label must be the input token or ignored'
        if label != IGNORE_INDEX:
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False) for r in runs]


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
