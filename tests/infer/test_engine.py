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
