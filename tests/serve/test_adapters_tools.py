"""LoRA adapters served by name, tool calls parsed by the templates' parsers, and `lmforge serve`'s arguments."""
from __future__ import annotations

import json
import warnings

import openai
import pytest

from .helpers import MODEL, TOOLS_TEMPLATE, client_for

HI = [{'role': 'user', 'content': 'Last letter: abcd'}]
WEATHER = {'type': 'function', 'function': {'name': 'get_weather', 'description': 'Weather in a city.',
                                            'parameters': {'type': 'object',
                                                           'properties': {'city': {'type': 'string'}}}}}
WEATHER_QUESTION = [{'role': 'user', 'content': 'Weather in Paris?'}]


@pytest.fixture(scope='module')
def adapter_dir(qwen2_dir, tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights: it changes the model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(qwen2_dir)
    with warnings.catch_warnings():  # peft asks transformers about gradient checkpointing by a deprecated name
        warnings.simplefilter('ignore', FutureWarning)
        lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=['q_proj', 'v_proj', 'o_proj'],
                                                init_lora_weights=False))
    path = tmp_path_factory.mktemp('lora') / 'tuned'
    lora.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope='module')
def adapter_server(qwen2_dir, adapter_dir):
    """Built as `lmforge serve --model DIR --adapters tuned=LORA` builds it."""
    from lmforge.args import parse_args
    from lmforge.args.serve import ServeArgs
    from lmforge.serve import start_server
    from lmforge.workflows.serve import make_app, make_engine

    args = parse_args(ServeArgs, ['--model', qwen2_dir, '--adapters', f'tuned={adapter_dir}',
                                  '--served_model_name', MODEL])
    app, _ = make_app(args, make_engine(args), api_key=None)
    handle = start_server(app)
    yield handle
    handle.stop()


def test_adapters_are_served_by_name(adapter_server, client):
    c = client_for(adapter_server)
    models = {m.id: m for m in c.models.list().data}
    assert list(models) == [MODEL, 'tuned'] and models['tuned'].parent == MODEL
    kw = dict(messages=HI, max_tokens=12, presence_penalty=2.0)
    base = c.chat.completions.create(model=MODEL, **kw)
    tuned = c.chat.completions.create(model='tuned', **kw)
    assert tuned.model == 'tuned'
    # the base name gets the model without the adapter: the same answer as a server with no adapter loaded
    no_adapter = client.chat.completions.create(model=MODEL, **kw)
    assert base.choices[0].message.content == no_adapter.choices[0].message.content
    assert tuned.choices[0].message.content != base.choices[0].message.content
    e_base = c.embeddings.create(model=MODEL, input='hello', encoding_format='float').data[0].embedding
    e_tuned = c.embeddings.create(model='tuned', input='hello', encoding_format='float').data[0].embedding
    assert e_base != e_tuned
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model='tuned-2', **kw)


class ScriptedEngine:
    """The real engine (prompts, template, tokenizer), except that every row 'generates' ``script``: the tokens
    go through the same `Sequence` path as generated ones (stop strings, end-of-turn, streaming)."""

    supports_interrupt = False  # each row's script runs at once: no batch to pause

    def __init__(self, engine, script: str):
        self._engine = engine
        self.script = script
        self.prompts = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate_rows(self, rows, adapter=None):
        tok = self._engine.tokenizer
        ids = tok(self.script, add_special_tokens=False)['input_ids'] + [tok.convert_tokens_to_ids('<|im_end|>')]
        for row in rows:
            self.prompts.append(tok.decode(row.prompt_ids))
            for token in ids:
                row.push(token)
            row.finish('length')


@pytest.fixture(scope='module')
def tools_engine(qwen2_dir, tmp_path_factory):
    from lmforge.infer.engine import PtEngine

    path = tmp_path_factory.mktemp('tpl') / 'tools.jinja'
    path.write_text(TOOLS_TEMPLATE)
    return PtEngine(qwen2_dir, template=str(path))


@pytest.fixture
def scripted(tools_engine):
    from lmforge.serve import create_app, start_server

    engines = []

    def start(script: str):
        engines.append(ScriptedEngine(tools_engine, script))
        handles.append(start_server(create_app(engines[-1], served_model_name=MODEL)))
        return client_for(handles[-1]), engines[-1]
    handles = []
    yield start
    for h in handles:
        h.stop()


def test_tool_calls(scripted):
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    client, engine = scripted(call)
    messages = [{'role': 'user', 'content': 'Weather in Paris?'}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert '"get_weather"' in engine.prompts[-1]  # the tools reached the prompt through the template
    choice = r.choices[0]
    assert choice.finish_reason == 'tool_calls' and choice.message.content is None
    (tc,) = choice.message.tool_calls
    assert tc.type == 'function' and tc.function.name == 'get_weather' and tc.id
    assert json.loads(tc.function.arguments) == {'city': 'Paris'}
    # streaming: the call arrives whole, then finish_reason tool_calls, then [DONE]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], stream=True))
    calls = [c for ch in chunks for c in (ch.choices[0].delta.tool_calls or []) if ch.choices]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [('get_weather', {'city': 'Paris'})]
    assert chunks[-1].choices[0].finish_reason == 'tool_calls'
    # the next turn: the assistant's call (arguments as a JSON string, as the SDK sends them) and the tool's answer
    history = messages + [{'role': 'assistant', 'content': None, 'tool_calls': [tc.model_dump()]},
                          {'role': 'tool', 'tool_call_id': tc.id, 'content': '21C and sunny'}]
    client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in engine.prompts[-1]
    assert '<tool_response>21C and sunny</tool_response>' in engine.prompts[-1]
    # tool_choice none: no tools in the prompt, the text stays text
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice='none')
    assert r.choices[0].message.content == call and r.choices[0].finish_reason == 'stop'
    assert '"get_weather"' not in engine.prompts[-1]


def test_plain_answers_with_tools_stay_content(scripted):
    client, _ = scripted('It is sunny.')
    r = client.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': 'Hi'}], tools=[WEATHER])
    assert r.choices[0].message.content == 'It is sunny.' and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == 'stop'
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': 'Hi'}],
                                                 tools=[WEATHER], stream=True))
    assert ''.join(ch.choices[0].delta.content or '' for ch in chunks if ch.choices) == 'It is sunny.'


def test_serve_args_and_commands(qwen2_dir, engine):
    from lmforge.args import parse_args
    from lmforge.args.serve import ServeArgs, split_adapters
    from lmforge.cli import COMMANDS, PLANNED
    from lmforge.errors import ArgumentError
    from lmforge.workflows.serve import make_app

    args = parse_args(ServeArgs, ['--model', qwen2_dir, '--adapters', 'tuned=/ckpt/a', '/ckpt/b', '--port', '0',
                                  '--max_concurrency', '2', '--temperature', '0.5'])
    assert args.host == '127.0.0.1' and args.port == 0 and args.infer_backend == 'pt'
    assert split_adapters(args.adapters) == (['/ckpt/b'], {'tuned': '/ckpt/a'})
    with pytest.raises(ArgumentError, match='adapters'):
        parse_args(ServeArgs, ['--model', qwen2_dir, '--adapters', 'bad name=/x'])
    with pytest.raises(ArgumentError, match='served_model_name'):
        parse_args(ServeArgs, ['--model', qwen2_dir, '--adapters', 'x=/a', '--served_model_name', 'x'])
    with pytest.raises(ArgumentError, match='port'):
        parse_args(ServeArgs, ['--model', qwen2_dir, '--port', '70000'])
    assert COMMANDS['serve'][:2] == COMMANDS['deploy'][:2] and 'serve' not in PLANNED
    app, name = make_app(args, engine, api_key=None)
    state = app.state.lmforge
    assert name == qwen2_dir and state.max_concurrency == 2 and state.defaults.temperature == 0.5
    state.worker.stop()


def test_serve_sdk_fails_fast_on_a_busy_port(qwen2_dir):
    import socket

    import lmforge.serve
    from lmforge.errors import ArgumentError

    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen(1)
        with pytest.raises(ArgumentError, match='--port'):  # before the model is loaded
            lmforge.serve(model=qwen2_dir, port=busy.getsockname()[1])


@pytest.fixture(scope='module')
def trained_tools_engine(tools_engine):
    """The tools engine's tiny model, trained here (on the same template encoding `lmforge sft` uses) to answer
    the weather question with a call."""
    import torch

    from lmforge.templates import encode_chat

    call = {'id': 'call_0', 'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}
    sample = encode_chat(tools_engine.tokenizer, WEATHER_QUESTION + [{'role': 'assistant', 'content': '',
                                                                      'tool_calls': [call]}], tools=[WEATHER])
    ids, labels = torch.tensor([sample['input_ids']]), torch.tensor([sample['labels']])
    model = tools_engine.model
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.02:  # ~100 steps: every answer token is then the clear argmax
            break
    model.eval()
    return tools_engine


def test_a_trained_model_calls_a_tool(trained_tools_engine):
    from lmforge.serve import create_app, start_server

    with start_server(create_app(trained_tools_engine, served_model_name=MODEL)) as handle:
        client = client_for(handle)
        r = client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER], max_tokens=80)
        choice = r.choices[0]
        assert choice.finish_reason == 'tool_calls', choice.message.content
        (tc,) = choice.message.tool_calls
        assert tc.function.name == 'get_weather' and json.loads(tc.function.arguments) == {'city': 'Paris'}
        chunks = list(client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER],
                                                     max_tokens=80, stream=True))
        calls = [c for ch in chunks if ch.choices for c in (ch.choices[0].delta.tool_calls or [])]
        assert [c.function.name for c in calls] == ['get_weather']
        assert chunks[-1].choices[0].finish_reason == 'tool_calls'
