"""`lmforge rlhf` takes the data flags of `lmforge sft`: --custom_dataset_info names, --strict, --streaming (for
the trainers that read a stream; the others are refused by name) and --interleave_prob."""
import json

import pytest

from lmforge.args.parse import from_kwargs
from lmforge.args.rlhf import RlhfArgs
from lmforge.errors import ArgumentError, DataError
from tests.conftest import chat_rows, write_jsonl
from tests.rlhf.helpers import FAST, letter_pairs, sum_prompts
from tests.rlhf.test_preference_rows import tokenizer_of

QUIET = dict(log=lambda m: None)


def _build(tokenizer, **kwargs):
    from lmforge.rlhf.data import build_rlhf_datasets

    lines = []
    train, val = build_rlhf_datasets(from_kwargs(RlhfArgs, model='unused', **kwargs), tokenizer, log=lines.append)
    return train, val, '\n'.join(lines)


@pytest.mark.parametrize('layout', ['swift', 'llamafactory'])
def test_custom_dataset_info_names_are_usable_in_rlhf(tmp_path, qwen2_dir, layout):
    from lmforge.data.registry import unregister_dataset

    write_jsonl(tmp_path / 'pairs.jsonl', [{'q': r['prompt'], 'good': r['chosen'], 'bad': r['rejected']}
                                           for r in letter_pairs(12, seed=3)])
    info = tmp_path / 'info.json'
    if layout == 'swift':
        info.write_text(json.dumps([{'dataset_name': 'my-pairs', 'dataset_path': 'pairs.jsonl',
                                     'columns': {'q': 'prompt', 'good': 'chosen', 'bad': 'rejected'}}]))
    else:
        info.write_text(json.dumps({'my-pairs': {'file_name': 'pairs.jsonl', 'ranking': True, 'columns': {
            'prompt': 'q', 'chosen': 'good', 'rejected': 'bad'}}}))
    try:
        train, _, log = _build(tokenizer_of(qwen2_dir), rlhf_type='dpo', dataset=['my-pairs'],
                               custom_dataset_info=[str(info)])
    finally:
        unregister_dataset('my-pairs')
    assert len(train) == 12 and {'prompt_ids', 'chosen_ids', 'rejected_ids'} <= set(train[0])
    assert f'--custom_dataset_info {info}: 1 datasets registered (my-pairs)' in log
    with pytest.raises(DataError, match='my-pairs'):  # without the flag the name means nothing
        _build(tokenizer_of(qwen2_dir), rlhf_type='dpo', dataset=['my-pairs'])


BAD_ROW = {'prompt': 'Last letter: abe', 'chosen': 'e'}  # no rejected answer


@pytest.mark.parametrize('rlhf_type, rows, bad, problem', [
    ('dpo', letter_pairs(4, seed=1), BAD_ROW, 'rejected: missing'),
    ('kto', letter_pairs(4, seed=1), BAD_ROW, 'rejected: missing'),
    ('grpo', sum_prompts(), {'solution': '4'}, 'row: unrecognised format'),
    ('gkd', chat_rows(4), {'messages': [{'role': 'user', 'content': 'x'}]}, 'messages:'),
])
def test_strict_stops_at_the_first_invalid_row(tmp_path, qwen2_dir, rlhf_type, rows, bad, problem):
    path = write_jsonl(tmp_path / 'd.jsonl', rows[:2] + [bad] + rows[2:])
    tok = tokenizer_of(qwen2_dir)
    extra = {'reward_funcs': ['accuracy'], 'num_generations': 2, 'per_device_train_batch_size': 2} \
        if rlhf_type == 'grpo' else \
        {'teacher_model': 'unused'} if rlhf_type == 'gkd' else {}
    train, _, log = _build(tok, rlhf_type=rlhf_type, dataset=[path], **extra)  # skipped, counted, shown
    assert len(train) == len(rows) * (2 if rlhf_type == 'kto' else 1)
    assert '1 invalid rows skipped' in log and f'{path}:3: {problem}' in log
    with pytest.raises(DataError, match=f'invalid row \\(--strict\\): {path}:3: {problem}'):
        _build(tok, rlhf_type=rlhf_type, dataset=[path], strict=True, **extra)


def test_a_stream_gives_the_samples_of_the_in_memory_encoding(tmp_path, qwen2_dir):
    from lmforge.rlhf.data import RlhfStream

    path = write_jsonl(tmp_path / 'pairs.jsonl', letter_pairs(40, seed=2) + [BAD_ROW])
    tok = tokenizer_of(qwen2_dir)
    listed, _, _ = _build(tok, rlhf_type='dpo', dataset=[path])
    stream, _, log = _build(tok, rlhf_type='dpo', dataset=[path], streaming=True, max_steps=5,
                            shuffle_buffer_size=8)
    assert isinstance(stream, RlhfStream) and 'streaming:' in log
    streamed = list(stream)
    key = lambda s: (tuple(s['prompt_ids']), tuple(s['chosen_ids']), tuple(s['rejected_ids']))  # noqa: E731
    assert sorted(map(key, streamed)) == sorted(map(key, listed))
    assert [key(s) for s in streamed] != [key(s) for s in listed]  # the buffer shuffled them
    assert stream.skipped == 1 and f'{path}:41: rejected: missing' in stream.report.invalid[0]
    with pytest.raises(DataError, match=f'--strict.*{path}:41'):
        strict, _, _ = _build(tok, rlhf_type='dpo', dataset=[path], streaming=True, max_steps=5, strict=True)
        list(strict)


@pytest.mark.parametrize('rlhf_type', ['dpo', 'kto', 'rm', 'grpo', 'ppo', 'gkd'])
def test_streaming_trains_each_method_that_reads_a_stream(tmp_path, qwen2_dir, rlhf_type):
    import datasets

    from lmforge.workflows.rlhf import build_rlhf, train_rlhf

    if rlhf_type in ('grpo', 'ppo'):
        rows, extra = sum_prompts() * 3, dict(reward_funcs=['accuracy'], num_generations=2, max_completion_length=4)
    elif rlhf_type == 'gkd':
        rows, extra = chat_rows(12), dict(teacher_model=qwen2_dir, max_completion_length=4)
    else:
        rows, extra = letter_pairs(12, seed=1), {}
    data = write_jsonl(tmp_path / 'd.jsonl', rows)
    args = from_kwargs(RlhfArgs, rlhf_type=rlhf_type, model=qwen2_dir, dataset=[data], output_dir=str(tmp_path / 'o'),
                       max_steps=2, streaming=True, shuffle_buffer_size=4,
                       **{**FAST, 'per_device_train_batch_size': 2, **extra})
    run = build_rlhf(args)
    want = type(run.train_rows) if rlhf_type == 'ppo' else datasets.IterableDataset  # ppo: lmforge's own trainer
    assert isinstance(run.trainer.train_dataset, want), type(run.trainer.train_dataset)
    assert train_rlhf(args, run)['global_step'] == 2


@pytest.mark.parametrize('rlhf_type', ['orpo', 'simpo', 'cpo'])
def test_streaming_is_refused_by_name_where_the_trainer_cannot_read_a_stream(rlhf_type):
    with pytest.raises(ArgumentError, match=f'--streaming: is not supported with --rlhf_type {rlhf_type}'):
        from_kwargs(RlhfArgs, rlhf_type=rlhf_type, model='m', dataset=['d.jsonl'], streaming=True, max_steps=5)
    with pytest.raises(ArgumentError, match='--max_steps: is required with --streaming'):
        from_kwargs(RlhfArgs, rlhf_type='dpo', model='m', dataset=['d.jsonl'], streaming=True)


def test_rlhf_datasets_are_interleaved_by_probability(tmp_path, qwen2_dir):
    a = write_jsonl(tmp_path / 'a.jsonl', letter_pairs(300, seed=1))
    b = write_jsonl(tmp_path / 'b.jsonl', [{**r, 'prompt': r['prompt'].replace('Last', 'First')}
                                           for r in letter_pairs(300, seed=2)])
    tok = tokenizer_of(qwen2_dir)
    concat, _, _ = _build(tok, rlhf_type='dpo', dataset=[a, b])
    mixed, _, log = _build(tok, rlhf_type='dpo', dataset=[a, b], interleave_prob=[0.75, 0.25])
    assert len(concat) == 600
    from_b = sum('First' in tok.decode(s['prompt_ids']) for s in mixed)
    assert len(mixed) - from_b == 300  # first_exhausted: a (the likelier) ran out first
    assert from_b / len(mixed) == pytest.approx(0.25, abs=0.04)
    assert 'interleaved with probabilities 0.75, 0.25, stopping: first_exhausted' in log
    again, _, _ = _build(tok, rlhf_type='dpo', dataset=[a, b], interleave_prob=[0.75, 0.25])
    assert again == mixed  # seeded
