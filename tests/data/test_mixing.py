"""Several --dataset values: concatenated, or interleaved by probability (seeded) with the stop rules of
`datasets.interleave_datasets` (first_exhausted = undersampling, all_exhausted = oversampling, without replacement =
each sample once), in memory and with --streaming; the flags' checks and both peers' names."""
from collections import Counter

import pytest

from lmforge.args import SftArgs, from_kwargs
from lmforge.data.mixing import Mix, interleave, mix_of
from lmforge.errors import ArgumentError, DataError
from tests.conftest import chat_rows, write_jsonl


def _mix(sizes, probs=None, stopping='first_exhausted', seed=0):
    sources = [(lambda d=d, n=n: ((d, i) for i in range(n))) for d, n in enumerate(sizes)]
    return list(interleave(sources, probs, stopping, seed))


def test_proportions_follow_the_probabilities_and_the_seed():
    got = _mix([2000, 2000, 2000], [0.6, 0.3, 0.1])
    counts = Counter(d for d, _ in got)
    assert counts[0] == 2000  # the likeliest is exhausted first, and that ends the mixture
    for d, p in enumerate([0.6, 0.3, 0.1]):
        assert counts[d] / len(got) == pytest.approx(p, abs=0.02)
    assert got == _mix([2000, 2000, 2000], [0.6, 0.3, 0.1])
    assert got != _mix([2000, 2000, 2000], [0.6, 0.3, 0.1], seed=1)
    weights = _mix([2000, 2000, 2000], [6, 3, 1])  # weights are normalised
    assert weights == got
    for d in range(3):  # each dataset's samples come in their order
        assert [i for e, i in got if e == d] == list(range(counts[d]))


def test_first_exhausted_stops_after_the_last_sample_of_the_first_dataset_to_run_out():
    got = _mix([50, 1000], [0.5, 0.5])
    assert got[-1] == (0, 49)  # the small one ran out: its last sample is the last one given
    assert Counter(d for d, _ in got)[0] == 50 and len(got) < 200
    assert _mix([3, 5], stopping='first_exhausted') == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]  # taking turns


def test_all_exhausted_oversamples_until_every_dataset_was_given_in_full():
    got = _mix([50, 1000], [0.5, 0.5], stopping='all_exhausted')
    counts = Counter(got)
    assert all(counts[(1, i)] == 1 for i in range(1000))  # the big one once, to its last sample, which ends it
    assert got[-1] == (1, 999)
    assert all(counts[(0, i)] >= 15 for i in range(50))  # the small one restarted again and again
    assert Counter(d for d, _ in got)[0] / len(got) == pytest.approx(0.5, abs=0.04)
    turns = _mix([3, 5], stopping='all_exhausted')
    assert turns == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2), (0, 0), (1, 3), (0, 1), (1, 4)]


def test_without_replacement_gives_every_sample_once_in_a_mixed_order():
    got = _mix([100, 300], [0.5, 0.5], stopping='all_exhausted_without_replacement')
    assert sorted(got) == [(0, i) for i in range(100)] + [(1, i) for i in range(300)]
    assert {d for d, _ in got[:20]} == {0, 1}


def test_an_empty_source_ends_the_mixture():
    assert _mix([0, 5], [0.5, 0.5]) == []
    assert _mix([0, 5], stopping='all_exhausted') == []
    assert sorted(_mix([0, 5], stopping='all_exhausted_without_replacement')) == [(1, i) for i in range(5)]


def _two_files(tmp_path, n_last=300, n_first=300):
    a = write_jsonl(tmp_path / 'last.jsonl', chat_rows(n_last, seed=1, task='last'))
    b = write_jsonl(tmp_path / 'first.jsonl', chat_rows(n_first, seed=2, task='first'))
    return a, b


def _from_first(tokenizer, samples) -> int:
    return sum('First letter' in tokenizer.decode(s['input_ids']) for s in samples)


def test_in_memory_training_data_is_interleaved(tmp_path, tokenizer):
    from lmforge.data import build_datasets

    a, b = _two_files(tmp_path)
    lines = []

    def build(**kw):
        args = from_kwargs(SftArgs, model='unused', dataset=[a, b], max_length=64, **kw)
        return build_datasets(args, tokenizer, 'sft', log=lines.append)[0]

    concat = build()
    assert len(concat) == 600 and _from_first(tokenizer, concat[:300]) == 0  # a, then b
    under = build(interleave_prob=[0.8, 0.2])
    n_b = _from_first(tokenizer, under)
    assert len(under) - n_b == 300 and n_b / len(under) == pytest.approx(0.2, abs=0.04)
    assert 'mixing: 2 datasets interleaved with probabilities 0.8, 0.2, stopping: first_exhausted' in '\n'.join(lines)
    over = build(interleave_prob=[0.8, 0.2], mix_strategy='interleave_over')  # LLaMA-Factory's name
    n_b = _from_first(tokenizer, over)
    assert n_b >= 300 and len(over) - n_b > 900  # b given in full once: a oversampled about 4x
    assert (n_b / len(over)) == pytest.approx(0.2, abs=0.04)
    assert build(interleave_prob=[0.8, 0.2]) == under  # the same mixture every run (--data_seed)
    assert build(interleave_prob=[0.8, 0.2], data_seed=7) != under


def test_interleaving_needs_samples_in_every_dataset(tmp_path, tokenizer):
    from lmforge.data import build_datasets

    a, _ = _two_files(tmp_path)
    bad = write_jsonl(tmp_path / 'bad.jsonl', [{'foo': 1}] * 3)
    args = from_kwargs(SftArgs, model='unused', dataset=[a, bad], interleave_prob=[0.5, 0.5], max_length=64)
    with pytest.raises(DataError, match=f'--dataset {bad}: no usable samples, so it cannot be interleaved'):
        build_datasets(args, tokenizer, 'sft', log=lambda m: None)
    concat = from_kwargs(SftArgs, model='unused', dataset=[a, bad], max_length=64)
    assert len(build_datasets(concat, tokenizer, 'sft', log=lambda m: None)[0]) == 300


def test_streaming_data_is_interleaved(tmp_path, tokenizer):
    from lmforge.data.streaming import StreamingDataset

    a, b = _two_files(tmp_path)

    def stream(mix, seed=0):
        return StreamingDataset([a, b], tokenizer, 'sft', max_length=64, truncation_strategy='delete',
                                buffer_size=16, seed=seed, mix=mix)

    under = list(stream(Mix('first_exhausted', (0.7, 0.3))))
    n_b = _from_first(tokenizer, under)
    assert len(under) - n_b == 300 and n_b / len(under) == pytest.approx(0.3, abs=0.04)
    assert _from_first(tokenizer, under[:100]) > 10  # mixed as they stream, not one file after the other
    assert list(stream(Mix('first_exhausted', (0.7, 0.3)))) == under
    over = list(stream(Mix('all_exhausted', (0.7, 0.3))))
    assert _from_first(tokenizer, over) >= 300 and len(over) > 900
    concat = list(stream(Mix()))
    assert len(concat) == 600 and _from_first(tokenizer, concat[:250]) == 0

    from lmforge.data import build_datasets
    lines = []
    args = from_kwargs(SftArgs, model='unused', dataset=[a, b], streaming=True, max_steps=3, max_length=64,
                       interleave_prob=[0.7, 0.3], stopping_strategy='all_exhausted')
    train, _ = build_datasets(args, tokenizer, 'sft', log=lines.append)
    assert isinstance(train, StreamingDataset) and train.mix == Mix('all_exhausted', (0.7, 0.3))
    assert '2 datasets interleaved with probabilities 0.7, 0.3, stopping: all_exhausted' in '\n'.join(lines)

    bad = write_jsonl(tmp_path / 'bad.jsonl', [{'foo': 1}] * 3)
    unusable = StreamingDataset([a, bad], tokenizer, 'sft', max_length=64, truncation_strategy='delete',
                                mix=Mix('first_exhausted', (0.5, 0.5)))
    with pytest.raises(DataError, match=f'no usable training samples in the first 3 rows of {bad}'):
        unusable.check_start()
    StreamingDataset([a, bad], tokenizer, 'sft', max_length=64, truncation_strategy='delete').check_start()


def test_flags_are_checked_and_both_peers_names_work():
    def args(**kw):
        return from_kwargs(SftArgs, model='m', dataset=['a.jsonl', 'b.jsonl'], **kw)

    assert mix_of(args()) == Mix()
    assert mix_of(args(interleave_prob=[0.7, 0.3])) == Mix('first_exhausted', (0.7, 0.3))  # ms-swift
    assert mix_of(args(interleave_prob=[0.7, 0.3], stopping_strategy='all_exhausted')) == \
        Mix('all_exhausted', (0.7, 0.3))
    assert mix_of(args(mix_strategy='interleave_over', interleave_prob=[1, 1])) == Mix('all_exhausted', (1, 1))
    assert mix_of(args(mix_strategy='interleave_once')) == Mix('all_exhausted_without_replacement', None)
    assert mix_of(args(stopping_strategy='first_exhausted')) == Mix('first_exhausted', None)  # taking turns
    assert mix_of(args(mix_strategy='concat')) == Mix()
    with pytest.raises(ArgumentError, match='--interleave_prob: gives 3 probabilities for 2 --dataset values'):
        args(interleave_prob=[0.5, 0.3, 0.2])
    with pytest.raises(ArgumentError, match='--interleave_prob: must be positive, got 0.0'):
        args(interleave_prob=[1, 0])
    with pytest.raises(ArgumentError, match='--interleave_prob: interleaves the datasets, but --mix_strategy concat'):
        args(interleave_prob=[1, 1], mix_strategy='concat')
    with pytest.raises(ArgumentError, match='--stopping_strategy: first_exhausted contradicts --mix_strategy '
                                            'interleave_over'):
        args(stopping_strategy='first_exhausted', mix_strategy='interleave_over')
    with pytest.raises(ArgumentError, match="--mix_strategy: invalid value 'interleave'"):
        args(mix_strategy='interleave')
