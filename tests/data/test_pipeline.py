"""Encoding pipeline: the on-disk cache and its key, worker processes, deterministic splits, packing that keeps
samples apart (packed loss == unpacked loss through the trainer's own loss)."""
import pytest

from lmforge.data import PadCollator, PaddingFreeCollator, encode_rows, pack, read_dataset
from lmforge.data.dataset import encode_specs, split_train_val
from lmforge.templates import IGNORE_INDEX, encode_chat
from tests.conftest import chat_rows, write_jsonl


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('LMFORGE_DATA_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def _encode(path, tokenizer, logged, **kw):
    opts = dict(max_length=64, truncation_strategy='delete')
    opts.update(kw)
    return encode_specs([path], tokenizer, 'sft', log=logged.append, **opts)


def test_cache_is_reused_and_keyed_by_data_tokenizer_template_and_options(tmp_path, tokenizer, cache_dir):
    import copy
    path = write_jsonl(tmp_path / 'd.jsonl', chat_rows(20) + [{'messages': []}])
    logged = []
    first, report = _encode(path, tokenizer, logged)
    assert not any('from the cache' in m for m in logged) and len(list(cache_dir.iterdir())) == 1
    again, report2 = _encode(path, tokenizer, logged)
    assert any('from the cache' in m for m in logged)
    assert again == first and report2.invalid == report.invalid and report2.samples == report.samples
    n = len(list(cache_dir.iterdir()))
    _encode(path, tokenizer, logged, max_length=32)                      # options
    _encode(path, tokenizer, logged, system='Be brief.')
    other = copy.deepcopy(tokenizer)
    other.chat_template = tokenizer.chat_template.replace('<|im_end|>', '<|endoftext|>')
    _encode(path, other, logged)                                         # template
    write_jsonl(path, chat_rows(21))                                     # data
    _encode(path, tokenizer, logged)
    assert len(list(cache_dir.iterdir())) == n + 4
    logged.clear()
    _encode(path, tokenizer, logged, load_from_cache_file=False)        # --load_from_cache_file false re-encodes
    assert not any('from the cache' in m for m in logged)


def test_worker_processes_give_the_same_samples_in_order(tmp_path, tokenizer):
    rows = read_dataset(write_jsonl(tmp_path / 'd.jsonl', chat_rows(1200) + [{'bad': 1}]))
    one, r1 = encode_rows(rows, tokenizer, 'sft', 64, 'delete', num_proc=1, progress=False)
    two, r2 = encode_rows(rows, tokenizer, 'sft', 64, 'delete', num_proc=2, progress=True)
    assert one == two and r1.invalid == r2.invalid == [f'{tmp_path}/d.jsonl:1201: row: unrecognised format: no '
                                                       '"messages" or "conversations", and a query/instruction/'
                                                       'prompt column is missing (columns: bad); map columns with '
                                                       '--columns']


def test_splits_are_deterministic_by_seed(tmp_path, tokenizer):
    samples = [{'input_ids': [i], 'labels': [i]} for i in range(100)]
    train, val = split_train_val(samples, 0.1, seed=7)
    assert len(val) == 10 and len(train) == 90 and sorted(map(str, train + val)) == sorted(map(str, samples))
    assert split_train_val(samples, 0.1, seed=7) == (train, val)
    assert split_train_val(samples, 0.1, seed=8)[1] != val
    from lmforge.args import SftArgs, from_kwargs
    from lmforge.data import build_datasets
    path = write_jsonl(tmp_path / 'd.jsonl', chat_rows(30))
    args = from_kwargs(SftArgs, model='unused', dataset=[path], split_dataset_ratio=0.2, seed=3,
                       load_from_cache_file=False)
    a = build_datasets(args, tokenizer, 'sft', log=lambda m: None)
    b = build_datasets(args, tokenizer, 'sft', log=lambda m: None)
    assert a == b and len(a[1]) == 6


def test_pack_bins_every_sample_once_within_max_length(tokenizer):
    samples = [encode_chat(tokenizer, r['messages']) for r in chat_rows(50)]
    samples += [{'input_ids': s['input_ids'] * 2, 'labels': s['labels'] * 2} for s in samples[:10]]
    packed = pack(samples, 64, seed=0)
    assert all(len(p['input_ids']) <= 64 for p in packed)
    assert sum(len(p['input_ids']) for p in packed) == sum(len(s['input_ids']) for s in samples)
    assert sum(p['position_ids'].count(0) for p in packed) == len(samples)
    assert sum(1 for p in packed if len(p['input_ids']) <= 32) <= 1  # best fit: at most one bin half empty
    assert pack(samples, 64, seed=0) == packed


def test_packed_loss_equals_unpacked_loss(qwen2_dir, tokenizer):
    """The trainer's own loss (LmTrainer.compute_loss) on packed sequences -- padding-free, and padded batches of
    packed rows -- equals the sum of each sample's loss alone: attention never crosses samples (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from lmforge.train.trainer import LmTrainer

    model = AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32, attn_implementation='sdpa')
    model.eval()
    samples = [encode_chat(tokenizer, r['messages']) for r in chat_rows(9, seed=3)]
    samples[0] = {'input_ids': samples[0]['input_ids'] * 2, 'labels': samples[0]['labels'] * 2}
    n_items = sum(sum(x != IGNORE_INDEX for x in s['labels'][1:]) for s in samples)
    packed = pack(samples, 64, seed=1)
    assert len(packed) >= 2 and any(p['position_ids'].count(0) > 1 for p in packed)

    trainers = {keep: LmTrainer(model=model, args=TrainingArguments('/tmp/unused', report_to='none'),
                                use_logits_to_keep=keep) for keep in (False, True)}

    def loss(collator, batch, keep=False):
        with torch.no_grad():
            return trainers[keep].compute_loss(model, collator(batch), num_items_in_batch=n_items).item()

    alone = sum(loss(PadCollator(tokenizer.pad_token_id), [s]) for s in samples)
    for keep in (False, True):
        assert loss(PaddingFreeCollator(), packed, keep) == pytest.approx(alone, rel=1e-5)
        assert sum(loss(PaddingFreeCollator(), [p], keep) for p in packed) == pytest.approx(alone, rel=1e-5)
        assert loss(PadCollator(tokenizer.pad_token_id), packed, keep) == pytest.approx(alone, rel=1e-5)


def test_fast_rendering_path_matches_the_slow_one_on_every_fixture_template(monkeypatch):
    """encode.py renders a conversation shape once with placeholders and each conversation once; the results must
    be those of rendering every turn (2k+1 renders), for every fixture template, warm and cold."""
    from lmforge.errors import TemplateError
    from lmforge.templates import encode as enc
    from tests.templates.helpers import HAVE_FIXTURES, applied_tokenizer, fixture_names

    if not HAVE_FIXTURES:
        pytest.skip('chat template fixtures not found')
    convs = [
        [{'role': 'user', 'content': 'What is 2+2?'}, {'role': 'assistant', 'content': 'It is 4.'}],
        [{'role': 'user', 'content': 'Hi '}, {'role': 'assistant', 'content': '  Hello there!  '}],
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'What is 2+2?'},
         {'role': 'assistant', 'content': 'It is 4.'}, {'role': 'user', 'content': 'And 3+3?'},
         {'role': 'assistant', 'content': '<think>add</think>It is 6.'}],
        [{'role': 'system', 'content': 'You are a helpful assistant.'}, {'role': 'user', 'content': 'How are you?'},
         {'role': 'assistant', 'content': 'I am fine, thanks.'}, {'role': 'user', 'content': 'Greet them back.'},
         {'role': 'assistant', 'content': 'Hello!', 'loss': False}],
        [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'Weather in Paris? '},
         {'role': 'assistant', 'content': 'It is 21C\n'}, {'role': 'user', 'content': ' Thanks'},
         {'role': 'assistant', 'content': '<think>\n\n</think>\n\nYou are welcome.'}],
    ]

    def outcome(tok, messages, **kw):
        try:
            return enc.render_samples(tok, messages, **kw)
        except TemplateError as e:
            return str(e)

    fast_used = 0
    for name in fixture_names():
        tok = applied_tokenizer(name)
        with monkeypatch.context() as m:
            m.setattr(enc, '_shape_key', lambda *a, **k: None)
            slow = [outcome(tok, c) for c in convs] + [outcome(tok, c, loss_scale='last_round') for c in convs]
        for _ in range(2):  # cold (first of its shape: both paths, compared) then warm (skeleton reused)
            got = [outcome(tok, c) for c in convs] + [outcome(tok, c, loss_scale='last_round') for c in convs]
            assert got == slow, name
        fast_used += sum(1 for s in enc._SKELETONS.get(tok, {}).values() if s is not None)
    assert fast_used >= 40  # most templates take the fast path on most shapes


def test_labels_from_the_char_map_equal_labels_from_offsets(tokenizer):
    """tokenize_spans labels tokens through the Rust encoding's char -> token map; it must label exactly the tokens
    whose offsets overlap a span, also where byte-level BPE splits one character over several tokens."""
    import random

    from lmforge.templates.encode import _labels_by_chars, _labels_by_offsets, _rust_encoding

    def reference(ids, offsets, spans):  # the original per-token loop
        labels = [IGNORE_INDEX] * len(ids)
        for t, (s, e) in enumerate(offsets):
            if any(s < b and e > a for a, b in spans):
                labels[t] = ids[t]
        return labels

    rng = random.Random(0)
    pieces = ['héllo', ' wörld', ' 😀', '<|im_end|>', '\n', '<|im_start|>', 'assistant', ' x', '  ', 'ß', '中文', 'a']
    checked = 0
    for _ in range(60):
        text = ''.join(rng.choice(pieces) for _ in range(rng.randint(3, 12)))
        enc = _rust_encoding(tokenizer, text)
        assert enc is not None
        out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc.ids == out['input_ids'] and [tuple(o) for o in enc.offsets] == [tuple(o) for o in
                                                                                 out['offset_mapping']]
        for _ in range(10):
            cuts = sorted(rng.sample(range(len(text) + 1), 4))
            spans = [(cuts[0], cuts[1]), (cuts[2], cuts[3])]
            want = reference(enc.ids, enc.offsets, spans)
            assert _labels_by_offsets(enc.ids, enc.offsets, spans) == want
            got = _labels_by_chars(enc, enc.ids, spans)
            if got is not None:
                assert got == want, (text, spans)
                checked += 1
    assert checked > 300
