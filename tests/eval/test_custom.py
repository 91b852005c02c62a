"""Custom .jsonl evaluation: metrics on hand-checked cases, answer extraction, file errors, and a model trained
here scoring higher than the untrained one."""
from __future__ import annotations

import json
import os

import pytest

from lmforge.errors import DataError
from tests.conftest import write_jsonl


def test_metrics_hand_checked():
    from lmforge.eval.metrics import bleu, exact_match, rouge_l, sentence_bleu

    assert exact_match('  The  Cat ', 'the cat') == 1.0 and exact_match('the cat.', 'the cat') == 0.0
    # ROUGE-L: LCS("the cat sat", "the cat sat on the mat") = 3; P = 3/3, R = 3/6, F1 = 2PR/(P+R) = 2/3
    assert rouge_l('the cat sat', 'the cat sat on the mat') == pytest.approx(2 / 3)
    # BLEU: hypothesis "a b c d e" against "a b c d f": n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (BP=1)
    # -> (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25
    assert bleu(['a b c d e'], ['a b c d f']) == pytest.approx(100 * 0.2 ** 0.25, abs=1e-3)
    assert sentence_bleu('a b c d e', 'a b c d f') == pytest.approx(100 * 0.2 ** 0.25, abs=1e-3)
    assert bleu(['x y z w'], ['x y z w']) == pytest.approx(100)
    # Chinese goes through jieba: 我/喜欢/北京 vs 我/喜欢/上海 -> LCS 2 of 3 words each -> F1 2/3
    assert rouge_l('我喜欢上海', '我喜欢北京') == pytest.approx(2 / 3)
    # ... and the libraries' own tokenizers would have scored it 0 (rouge-score drops non-Latin text)
    from rouge_score import rouge_scorer
    assert rouge_scorer.RougeScorer(['rougeL']).score('我喜欢北京', '我喜欢上海')['rougeL'].fmeasure == 0
    # BLEU on jieba words: 我们/今天/去/北京/的/公园/散步 vs 我们/明天/去/上海/的/公园/散步: precisions 5/7, 2/6, 1/5 and
    # 0/4 (sacrebleu's exp smoothing makes that 1/(2*4)), BP = 1 -> (5/7 * 1/3 * 1/5 * 1/8) ** (1/4) = (1/168) ** 0.25
    assert bleu(['我们今天去北京的公园散步'], ['我们明天去上海的公园散步']) == pytest.approx(100 * (1 / 168) ** 0.25,
                                                                                 abs=1e-3)
    assert sentence_bleu('我喜欢北京', '我喜欢北京') == pytest.approx(100)  # effective order for short sentences


@pytest.mark.parametrize('text,expected', [
    ('B', 'B'), ('(C) because', 'C'), ('D. dig', 'D'), ('A good answer is C', 'C'), ('The answer is: B', 'B'),
    ('答案是C', 'C'), ('I pick B here', 'B'), ('E', None), ('no idea', None), ('A or B', None), ('', None),
])
def test_extract_choice(text, expected):
    from lmforge.eval.custom import extract_choice

    assert extract_choice(text, 4) == expected


def test_row_formats(tmp_path):
    from lmforge.eval.custom import load_custom

    path = write_jsonl(tmp_path / 'mc.jsonl', [
        {'question': 'q1', 'choices': ['x', 'y'], 'answer': 1},
        {'question': 'q2', 'choices': {'A': 'x', 'B': 'y'}, 'answer': 'y'},
        {'question': 'q3', 'A': 'x', 'B': 'y', 'C': 'z', 'answer': 'c'},
    ])
    kind, items = load_custom(path)
    assert kind == 'mc' and [i.reference for i in items] == ['B', 'B', 'C']
    assert items[2].choices == ['x', 'y', 'z'] and 'C. z' in items[2].messages[-1]['content']
    path = write_jsonl(tmp_path / 'qa.jsonl', [
        {'query': 'q', 'response': 'r', 'system': 'be brief'},
        {'messages': [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'r2'}]},
    ])
    kind, items = load_custom(path, limit=5)
    assert kind == 'qa' and [i.reference for i in items] == ['r', 'r2'] and items[0].messages[0]['role'] == 'system'


@pytest.mark.parametrize('rows,line,match', [
    ([{'question': 'q', 'choices': ['x', 'y'], 'answer': 'C'}], 1, 'neither an option letter'),
    ([{'question': 'q', 'choices': ['x', 'y'], 'answer': 0}, {'question': 'q', 'answer': 'a'}], 2,
     'open-QA row in a multiple-choice file'),
    ([{'question': 'q', 'choices': ['x'], 'answer': 0}], 1, 'at least two'),
    ([{'text': 'hello'}], 1, 'expected a multiple-choice row'),
])
def test_bad_rows_name_file_and_line(rows, line, match, tmp_path):
    from lmforge.eval.custom import load_custom

    path = write_jsonl(tmp_path / 'bad.jsonl', rows)
    with pytest.raises(DataError, match=match) as e:
        load_custom(path)
    assert f'bad.jsonl:{line}' in str(e.value)


def test_trained_model_scores_higher(eval_data, qwen2_dir, trained_dir, tmp_path, capsys):
    """The untrained model does not answer with an option letter; the trained one does, and the right one."""
    from lmforge import eval as evaluate

    common = dict(eval_dataset=[eval_data['mc'], eval_data['qa']], eval_output_dir=str(tmp_path), max_new_tokens=6)
    before = evaluate(model=qwen2_dir, **common)
    after = evaluate(model=trained_dir, **common)
    out = capsys.readouterr().out
    assert after['results']['facts_mc']['accuracy'] == 1.0 > before['results']['facts_mc']['accuracy']
    assert after['results']['facts_mc']['unanswered'] == 0.0
    assert set(after['results']['facts_qa']) == {'exact_match', 'bleu', 'rouge_l'}
    assert '| facts_mc' in out and 'accuracy' in out and '100.00%' in out and 'rouge_l' in out
    report = json.loads(open(after['report_path'], encoding='utf-8').read())
    assert report['results'] == after['results'] and report['n_samples'] == {'facts_mc': 8, 'facts_qa': 8}
    rows = [json.loads(line) for line in open(os.path.join(os.path.dirname(after['report_path']),
                                                           'predictions_facts_mc.jsonl'))]
    assert len(rows) == 8 and all(r['correct'] and r['response'] == 'B' for r in rows)
