"""The OpenAI API as the official SDK sees it: models, chat (plain, streaming, n, seeds, stop, logprobs),
completions (echo, logprobs as lm-eval asks for them) and embeddings."""
from __future__ import annotations

import math
import re

import httpx
import pytest

from .helpers import MODEL

HI = [{'role': 'user', 'content': 'Last letter: abcd'}]
# The random model repeats one token under plain greedy decoding; a presence penalty makes its greedy text varied.
VARIED = dict(presence_penalty=2.0)


def stream_text(stream) -> tuple[dict, dict, list]:
    """{choice: text}, {choice: finish_reason}, usage chunks — from an SDK stream."""
    texts, reasons, usages = {}, {}, []
    for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, '') + (c.delta.content or '')
            if c.finish_reason:
                assert c.index not in reasons, 'a choice finished twice'
                reasons[c.index] = c.finish_reason
    return texts, reasons, usages


def test_health_and_models(server, client):
    assert httpx.get(server.base_url + '/health').json()['status'] == 'ok'
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_plain(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=12, **VARIED)
    assert r.model == MODEL and r.object == 'chat.completion' and r.id.startswith('chatcmpl-')
    (choice,) = r.choices
    assert choice.message.role == 'assistant' and choice.message.content
    assert choice.finish_reason == 'length'
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_multipart_content_is_the_joined_text(client):
    parts = [{'type': 'text', 'text': 'Last letter:'}, {'type': 'text', 'text': 'abcd'}]
    a = client.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': parts}], max_tokens=8,
                                       **VARIED)
    b = client.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': 'Last letter:\nabcd'}],
                                       max_tokens=8, **VARIED)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_stream_concatenates_to_the_plain_answer(client):
    plain = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=20, **VARIED)
    stream = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=20, stream=True,
                                            stream_options={'include_usage': True}, **VARIED)
    texts, reasons, usages = stream_text(stream)
    assert texts == {0: plain.choices[0].message.content}
    assert reasons == {0: 'length'}
    assert len(usages) == 1 and usages[0].completion_tokens == 20
    assert usages[0].prompt_tokens == plain.usage.prompt_tokens


def test_raw_stream_ends_with_done(server):
    body = {'model': MODEL, 'messages': HI, 'max_tokens': 4, 'stream': True}
    with httpx.stream('POST', server.url + '/chat/completions', json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers['content-type'].startswith('text/event-stream')
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == 'data: [DONE]'
    assert all(line.startswith('data: ') for line in lines)


def test_n_and_seeded_sampling(client):
    kw = dict(model=MODEL, messages=HI, max_tokens=10, temperature=1.0, seed=7)
    one = client.chat.completions.create(**kw).choices[0].message.content
    again = client.chat.completions.create(**kw).choices[0].message.content
    assert one == again  # a seed fixes the sample, whatever else is in the batch
    many = client.chat.completions.create(n=3, **kw)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].message.content == one
    assert len({c.message.content for c in many.choices}) > 1  # copy i samples with seed + i
    assert many.usage.completion_tokens == 30
    texts, reasons, _ = stream_text(client.chat.completions.create(n=3, stream=True, **kw))
    assert texts == {c.index: c.message.content for c in many.choices} and set(reasons) == {0, 1, 2}


def test_stop_strings(client):
    full = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=30, **VARIED).choices[0].message.content
    match = re.search(r'[A-Za-z]{2}', full[1:])
    assert match, f'no letters to stop on in {full!r}'
    stop = match.group(0)
    cut = full[:full.index(stop)]
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=30, stop=[stop, 'never-there'],
                                       **VARIED)
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == 'stop'
    texts, reasons, _ = stream_text(client.chat.completions.create(model=MODEL, messages=HI, max_tokens=30,
                                                                   stop=stop, stream=True, **VARIED))
    assert texts == {0: cut} and reasons == {0: 'stop'}


def test_end_of_turn_token_stops_with_reason_stop(client, engine):
    im_end = engine.tokenizer.convert_tokens_to_ids('<|im_end|>')
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=10, logit_bias={str(im_end): 100})
    assert r.choices[0].finish_reason == 'stop' and r.choices[0].message.content == ''
    assert r.usage.completion_tokens == 1


def test_max_completion_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, max_completion_tokens=3)
    assert r.choices[0].finish_reason == 'length' and r.usage.completion_tokens == 3


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5, logprobs=True, top_logprobs=3,
                                       **VARIED)
    content = r.choices[0].logprobs.content
    assert len(content) == 5 and ''.join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
    plain = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5, logprobs=True, top_logprobs=1)
    for t in plain.choices[0].logprobs.content:  # greedy without penalties: the chosen token is the most likely
        assert t.token == t.top_logprobs[0].token and math.isclose(t.logprob, t.top_logprobs[0].logprob)


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt='The quick brown fox', max_tokens=6, **VARIED)
    assert r.object == 'text_completion' and r.model == MODEL
    assert r.choices[0].finish_reason == 'length' and r.usage.completion_tokens == 6
    echoed = client.completions.create(model=MODEL, prompt='The quick brown fox', max_tokens=6, echo=True, **VARIED)
    assert echoed.choices[0].text == 'The quick brown fox' + r.choices[0].text
    two = client.completions.create(model=MODEL, prompt=['The quick', 'brown fox'], max_tokens=4, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert two.choices[0].text == two.choices[1].text  # greedy: both copies agree
    stream = client.completions.create(model=MODEL, prompt='The quick brown fox', max_tokens=6, stream=True,
                                       **VARIED)
    chunks = list(stream)
    assert ''.join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == 'length'


def test_completion_prompt_logprobs_as_lm_eval_asks(client, engine):
    """lm-eval's local-completions loglikelihood: token ids in, echo, max_tokens 0, logprobs 1."""
    import torch

    ids = engine.tokenizer('The quick brown fox jumps')['input_ids']
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids)
    assert r.choices[0].text == engine.tokenizer.decode(ids)
    with torch.no_grad():
        logits = engine.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    expected = [logits[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    for token, top in zip(lp.tokens[1:], lp.top_logprobs[1:]):
        assert token in top  # the chosen token is always listed: lm-eval's is_greedy check reads it there


def test_embeddings(client, engine):
    import torch

    r = client.embeddings.create(model=MODEL, input=['hello there', 'The quick brown fox'])  # SDK asks base64
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == engine.hidden_size for d in r.data)
    assert r.data[0].embedding != r.data[1].embedding
    ids = engine.tokenizer('hello there')['input_ids']
    as_float = client.embeddings.create(model=MODEL, input=ids, encoding_format='float')
    assert as_float.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-5)
    assert r.usage.prompt_tokens == len(ids) + len(engine.tokenizer('The quick brown fox')['input_ids'])
    with torch.no_grad():  # mean over tokens of the final-normed last hidden state
        expected = engine.model.model(torch.tensor([ids])).last_hidden_state[0].mean(0).tolist()
    assert as_float.data[0].embedding == pytest.approx(expected, abs=1e-4)


def test_echo_logprobs_include_the_end_of_turn_token(client, engine):
    """The generated token is always in ``logprobs``, the end-of-turn token included (as vLLM and OpenAI do; only
    the text leaves it out): lm-eval's loglikelihood reads ``token_logprobs[ctxlen:-1]`` after echo + max_tokens=1."""
    import torch

    eot = engine.tokenizer.convert_tokens_to_ids('<|im_end|>')
    ids = engine.tokenizer('The quick brown fox')['input_ids']
    with torch.no_grad():
        expected = engine.model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)[eot].item()
    for stream in (False, True):
        r = client.completions.create(model=MODEL, prompt=ids, max_tokens=1, echo=True, logprobs=2, temperature=0,
                                      logit_bias={str(eot): 100}, stream=stream)  # the bias makes it stop at once
        chunks = list(r) if stream else [r]
        tokens, lps, offsets = [], [], []
        for c in chunks:
            if c.choices[0].logprobs:
                tokens += c.choices[0].logprobs.tokens
                lps += c.choices[0].logprobs.token_logprobs
                offsets += c.choices[0].logprobs.text_offset
        text = ''.join(c.choices[0].text for c in chunks)
        assert chunks[-1].choices[0].finish_reason == 'stop' and text == engine.tokenizer.decode(ids)
        assert len(lps) == len(ids) + 1 and tokens[-1] == '<|im_end|>'
        assert lps[-1] == pytest.approx(expected, abs=1e-4)  # the model's own logprob (logit_bias only chose it)
        assert offsets[-1] == len(text)
    full = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0, **VARIED).choices[0].text
    stop = full[3:5]  # cut inside the text: the stop string's own tokens still have their entries
    for stream in (False, True):
        r = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, logprobs=0, stop=stop, stream=stream,
                                      temperature=0, **VARIED, **({'stream_options': {'include_usage': True}}
                                                                  if stream else {}))
        chunks = list(r) if stream else [r]
        tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
        assert ''.join(c.choices[0].text for c in chunks if c.choices) == full[:full.index(stop)]
        assert len(tokens) == chunks[-1].usage.completion_tokens and ''.join(tokens).startswith(full[:5])
    chat = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3, logprobs=True,
                                          logit_bias={str(eot): 100})
    assert chat.choices[0].finish_reason == 'stop' and chat.choices[0].logprobs.content == []  # chat: content only
    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3, logprobs=True, stream=True,
                                                 logit_bias={str(eot): 100}))
    assert not any(c.choices[0].logprobs and c.choices[0].logprobs.content for c in chunks)
