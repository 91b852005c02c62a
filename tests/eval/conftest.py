"""Data and models for the eval tests: eight questions as a multiple-choice set, an open-QA set and lm-eval YAML
tasks over local jsonl files; a tiny Qwen2 fine-tuned here (the "trained" model) next to the untrained one.

The trained model learns the multiple-choice format and that the right option is B (which a 2-layer, 64-wide model
learns in a few dozen CPU steps; memorising which option is right per question takes it hundreds)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import fact_rows, write_jsonl

FACTS = [(m[0]['content'], m[1]['content']) for m in (r['messages'] for r in fact_rows(8))]
ANSWERS = [a for _, a in FACTS]
MC_TEXT = ('{{question}}\n\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\n\n'
           'Answer with the letter of the correct option.')  # lmforge.eval.custom.mc_prompt as a Jinja template


def mc_rows() -> list[dict]:
    """Each fact as a 4-way question, the right answer second."""
    rows = []
    for i, (q, a) in enumerate(FACTS):
        wrong = [x for x in ANSWERS if x != a][i % 5:i % 5 + 3]
        rows.append({'question': q, 'choices': [wrong[0], a, wrong[1], wrong[2]], 'answer': 'B'})
    return rows


def _yaml(name: str, data: str, output_type: str, rest: str) -> str:
    return (f'task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(data)}\n'
            f'test_split: test\noutput_type: {output_type}\ndoc_to_text: {json.dumps(MC_TEXT)}\n'
            f'target_delimiter: ""\n{rest}')


@pytest.fixture(scope='session')
def eval_data(tmp_path_factory):
    d = tmp_path_factory.mktemp('eval-data')
    mc = mc_rows()
    paths = {'mc': write_jsonl(d / 'facts_mc.jsonl', mc),
             'qa': write_jsonl(d / 'facts_qa.jsonl', [{'question': q, 'answer': a} for q, a in FACTS]),
             'harness': write_jsonl(d / 'harness.jsonl', [{**r, 'label': 1} for r in mc])}
    (d / 'tasks').mkdir()
    (d / 'tasks' / 'mc_loglik.yaml').write_text(_yaml(
        'mc_loglik', paths['harness'], 'multiple_choice',
        'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: "{{label}}"\n'
        'metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n'))
    (d / 'tasks' / 'mc_gen.yaml').write_text(_yaml(
        'mc_gen', paths['harness'], 'generate_until',
        'doc_to_target: "{{answer}}"\ngeneration_kwargs:\n  until: ["<|im_end|>"]\n  max_gen_toks: 4\n'
        '  do_sample: false\nmetric_list:\n  - metric: exact_match\n    aggregation: mean\n'
        '    higher_is_better: true\n'))
    paths['loglik_yaml'] = str(d / 'tasks' / 'mc_loglik.yaml')
    paths['gen_yaml'] = str(d / 'tasks' / 'mc_gen.yaml')
    paths['tasks_dir'] = str(d / 'tasks')
    return paths


@pytest.fixture(scope='session')
def trained_dir(tmp_path_factory, qwen2_dir):
    """Full fine-tune on the multiple-choice prompts as `lmforge eval` renders them (answer: the letter)."""
    from lmforge import sft
    from lmforge.eval.custom import mc_prompt

    rows = [{'messages': [{'role': 'user', 'content': mc_prompt(r['question'], r['choices'])},
                          {'role': 'assistant', 'content': r['answer']}]} for r in mc_rows()]
    tmp = tmp_path_factory.mktemp('eval-trained')
    data = write_jsonl(tmp / 'train.jsonl', rows * 2)
    out = sft(model=qwen2_dir, dataset=[data], tuner_type='full', max_steps=20, learning_rate=1e-2,
              lr_scheduler_type='constant', per_device_train_batch_size=8, gradient_checkpointing=False,
              report_to=['none'], save_steps=1000, output_dir=str(tmp / 'out'), logging_steps=10)
    return out['last_checkpoint']
