"""The pt engine: batched answers and streamed answers are the same text; stop strings cut both."""
from lmforge.infer.engine import InferRequest, PtEngine, RequestConfig


def test_stream_equals_batched_answer_and_stop_strings_cut_both(qwen2_dir):
    engine = PtEngine(qwen2_dir)
    requests = [InferRequest([{'role': 'user', 'content': q}]) for q in ('Last letter: abc', 'Hi there', 'x')]
    config = RequestConfig(max_new_tokens=12)
    batched = engine.infer(requests, config, max_batch_size=2)  # two batches, left padding in the first
    for request, answer in zip(requests, batched):
        assert answer.finish_reason in ('stop', 'length') and answer.completion_tokens >= 1
        alone = engine.infer([request], config)[0]
        assert alone.text == answer.text  # padding changes nothing
        assert ''.join(engine.stream(request, config)) == answer.text
    text = batched[0].text
    assert len(text) > 3, 'the random model should say something to cut'
    stop = text[2:4]
    cut = engine.infer([requests[0]], RequestConfig(max_new_tokens=12, stop=[stop]))[0]
    assert cut.text == text[:text.index(stop)] and cut.finish_reason == 'stop'
    assert ''.join(engine.stream(requests[0], RequestConfig(max_new_tokens=12, stop=[stop]))) == cut.text


def test_incremental_detokenization_matches_full_decode(tokenizer):
    """Text released token by token (tokenizers' DecodeStream, and the Python window it replaces) is the decode of all
    tokens: UTF-8 characters split over byte-level tokens are held until complete, special tokens are skipped."""
    from lmforge.infer.sequence import Sequence, _decode_stream

    text = 'Last letter: héllo 你好 🙂<|im_start|> wörld'
    ids = tokenizer(text, add_special_tokens=False)['input_ids']
    assert len(ids) > len(text.split()) + 6  # the rare characters are split into byte tokens
    assert _decode_stream(tokenizer) is not None, 'the fast path should apply to a plain fast tokenizer'
    outputs = []
    for fast in (True, False):
        pieces = []
        seq = Sequence([1], RequestConfig(max_new_tokens=len(ids)), tokenizer, stop_ids=[],
                       listener=lambda s, piece, lps: pieces.append(piece))
        if not fast:
            seq._stream = None
        for token in ids:
            seq.push(token)
        assert seq.finish_reason == 'length' and ''.join(pieces) == seq.text
        assert all('\ufffd' not in p for p in pieces)
        outputs.append(seq.text)
    assert outputs[0] == outputs[1] == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_paused_batch_continues_as_if_never_paused(qwen2_dir):
    """Continuous batching's core: `generate_rows` paused by ``interrupt`` returns its unfinished rows, and a later
    call continues them beside a newcomer: every row (greedy with penalties, seeded sampling, logprobs, a stop string)
    ends with the tokens, text and logprobs it has when generated in one go, and so does the newcomer."""
    import pytest

    engine = PtEngine(qwen2_dir)
    prompts = [engine.prompt_ids(InferRequest([{'role': 'user', 'content': q}])) for q in ('Last letter: abc', 'Hi')]
    probe = engine.new_sequence(prompts[1], RequestConfig(max_new_tokens=12, presence_penalty=1.5))
    engine.generate_rows([probe])
    after = len(engine.tokenizer.decode(probe.token_ids[:5], skip_special_tokens=True))  # a stop string seen late
    stop = next(c for c in (probe.text[i:i + 2] for i in range(after, len(probe.text))) if probe.text.find(c) >= after)
    no_end = {engine.tokenizer.convert_tokens_to_ids('<|im_end|>'): -100.0}  # long enough to be paused surely
    configs = [RequestConfig(max_new_tokens=40, presence_penalty=1.5, logprobs=True, top_logprobs=2,
                             logit_bias=no_end),
               RequestConfig(max_new_tokens=36, temperature=0.9, top_p=0.9, seed=7, logprobs=True, logit_bias=no_end),
               RequestConfig(max_new_tokens=12, presence_penalty=1.5, stop=[stop])]

    def rows():
        return [engine.new_sequence(p, c) for p, c in zip([*prompts, prompts[1]], configs)]

    whole, paused = rows(), rows()
    newcomer, alone = (engine.new_sequence(prompts[1], RequestConfig(max_new_tokens=6)) for _ in range(2))
    assert engine.generate_rows(whole) == [] and engine.generate_rows([alone]) == []
    assert whole[2].finish_reason == 'stop' and len(whole[0].logprobs) == len(whole[0].token_ids)
    steps = []  # asked from step 4 on; the engine pauses once that is affordable (a step or a few later here)
    left = engine.generate_rows(paused, interrupt=lambda active: steps.append(active) or len(steps) >= 4)
    assert left == [r for r in paused if not r.done] and left[:2] == paused[:2]
    assert all(len(r.token_ids) == len(steps) for r in left) and len(steps) < 36
    assert engine.generate_rows(left + [newcomer]) == []
    for a, b in zip(whole + [alone], paused + [newcomer]):
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
        assert [e.logprob for e in a.logprobs] == pytest.approx([e.logprob for e in b.logprobs], abs=1e-4)
