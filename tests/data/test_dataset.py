"""Reading, format detection, row-level errors with file:row, truncation counts, padding-free == padded loss."""
import json

import pytest

from lmforge.data import PadCollator, PaddingFreeCollator, encode_rows, normalize, read_dataset
from lmforge.data.formats import RowError
from lmforge.templates import IGNORE_INDEX, encode_chat
from tests.conftest import chat_rows, write_jsonl


def test_formats_normalise_to_messages():
    expected = [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}]
    assert normalize({'messages': expected})['messages'] == expected
    assert normalize({'conversations': [{'from': 'human', 'value': 'hi'}, {'from': 'gpt', 'value': 'yo'}]})[
        'messages'] == expected
    assert normalize({'query': 'hi', 'response': 'yo'})['messages'] == expected
    assert normalize({'prompt': 'hi', 'completion': 'yo'})['messages'] == expected
    alpaca = normalize({'instruction': 'hi', 'input': 'there', 'output': 'yo', 'system': 'S'})['messages']
    assert alpaca[0] == {'role': 'system', 'content': 'S'} and alpaca[1]['content'] == 'hi\nthere'
    assert normalize({'text': 'plain'}, 'pt') == {'text': 'plain'}


@pytest.mark.parametrize('row, field, problem', [
    ({'messages': []}, 'messages', 'is empty'),
    ({'messages': [{'role': 'user', 'content': 'q'}]}, 'messages', 'no assistant'),
    ({'messages': [{'role': 'robot', 'content': 'q'}]}, 'messages[0].role', 'unknown role'),
    ({'messages': [{'content': 'q'}]}, 'messages[0]', 'missing "role"'),
    ({'messages': [{'role': 'user', 'content': 3}]}, 'messages[0].content', 'expected a string'),
    ({'messages': [{'role': 'assistant', 'content': 'a'}, {'role': 'user', 'content': 'q'}]}, 'messages',
     'user turn must come first'),
    ({'messages': [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'},
                   {'role': 'system', 'content': 's'}]}, 'messages[2].role', 'only allowed first'),
    ({'foo': 1}, 'row', 'unrecognised format'),
    ({'query': 'q', 'response': None}, 'response', 'is null'),
    ({'text': ''}, 'text', 'is empty'),
])
def test_bad_rows_name_the_field(row, field, problem):
    mode = 'pt' if 'text' in row else 'sft'
    with pytest.raises(RowError) as e:
        normalize(row, mode)
    assert e.value.field == field and problem in e.value.problem


def test_invalid_rows_are_reported_with_file_and_line(tmp_path, tokenizer):
    path = tmp_path / 'mixed.jsonl'
    good = json.dumps(chat_rows(1)[0])
    path.write_text('\n'.join([good, '{"messages": [', good, '{"messages": [{"role": "user", "content": "q"}]}',
                               good]) + '\n')
    samples, report = encode_rows(read_dataset(str(path)), tokenizer, 'sft', max_length=64,
                                  truncation_strategy='delete')
    assert len(samples) == 3
    assert report.invalid == [f'{path}:2: row: bad JSON line: Expecting value at column 15',
                              f'{path}:4: messages: has no assistant message to train on']


@pytest.mark.parametrize('strategy, kept, no_labels', [('delete', 1, 0), ('left', 2, 0), ('right', 1, 1)])
def test_rows_over_max_length_follow_the_strategy_and_are_counted(tmp_path, tokenizer, strategy, kept, no_labels):
    rows = [{'messages': [{'role': 'user', 'content': 'short'}, {'role': 'assistant', 'content': 'ok'}]},
            {'messages': [{'role': 'user', 'content': 'long ' * 30}, {'role': 'assistant', 'content': 'ok'}]}]
    path = write_jsonl(tmp_path / 'd.jsonl', rows)
    samples, report = encode_rows(read_dataset(path), tokenizer, 'sft', max_length=24,
                                  truncation_strategy=strategy)
    assert report.too_long == 1 and len(samples) == kept
    assert all(len(s['input_ids']) <= 24 for s in samples)
    # cut on the right, the long row loses its answer: nothing left to train on, so it is dropped and counted
    assert report.no_labels == no_labels


def test_sampling_with_hash(tmp_path):
    path = write_jsonl(tmp_path / 'd.jsonl', chat_rows(10))
    assert len(read_dataset(path + '#4')) == 4
    assert len(read_dataset(path + '#25')) == 25
    assert read_dataset(path + '#4', seed=1) == read_dataset(path + '#4', seed=1)


def test_padding_free_loss_equals_padded_loss(qwen2_dir, tokenizer):
    """The trainer's own loss (LmTrainer.compute_loss) on the same samples, padded vs padding-free, with and
    without the LM head restricted to trained positions: all equal, and equal to each sample run alone."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from lmforge.train.trainer import LmTrainer

    model = AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32, attn_implementation='sdpa')
    samples = [encode_chat(tokenizer, r['messages']) for r in chat_rows(6)]
    samples[0] = {'input_ids': samples[0]['input_ids'] * 2, 'labels': samples[0]['labels'] * 2}  # uneven lengths
    n_items = sum(sum(x != IGNORE_INDEX for x in s['labels'][1:]) for s in samples)

    def loss(collator, logits_to_keep, batch_samples):
        trainer = LmTrainer(model=model, args=TrainingArguments('/tmp/unused', report_to='none'),
                            use_logits_to_keep=logits_to_keep)
        return trainer.compute_loss(model, collator(batch_samples), num_items_in_batch=n_items).item()

    alone = sum(loss(PadCollator(tokenizer.pad_token_id), False, [s]) for s in samples)
    for keep in (False, True):
        assert loss(PadCollator(tokenizer.pad_token_id), keep, samples) == pytest.approx(alone, rel=1e-5)
        assert loss(PaddingFreeCollator(), keep, samples) == pytest.approx(alone, rel=1e-5)
