"""--infer_backend vllm | sglang | lmdeploy: refused clearly where they cannot run, settings mapped to each library's
sampling parameters, prompts and stop ids shared with the pt engine, unsupported features answered as 400s; and, on a
CUDA machine with vLLM installed, a tiny model served through vLLM to the openai client."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import openai
import pytest

from lmforge.errors import ArgumentError, LmforgeError
from lmforge.infer.backends import (BackendEngine, check_backend, lmdeploy_generation, lora_table, sglang_sampling,
                                    token_logprob, vllm_lora_rank, vllm_sampling)
from lmforge.infer.engine import InferRequest, PtEngine, RequestConfig
from tests.conftest import REPO

OPTIONAL = ('vllm', 'sglang', 'lmdeploy')


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def lmforge(*argv, env=None):
    return subprocess.run([sys.executable, '-m', 'lmforge', *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=120)


def assert_refused(result, *phrases):
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    for p in phrases:
        assert p in result.stderr, result.stderr


@pytest.mark.parametrize('backend', OPTIONAL)
def test_missing_backend_is_refused_by_the_cli_before_anything_loads(backend, tmp_path):
    if installed(backend):
        pytest.skip(f'{backend} is installed here')
    # --model does not exist: an error about the engine rather than the model proves the engine was checked first
    r = lmforge('serve', '--model', str(tmp_path / 'no-model'), '--infer_backend', backend, '--port', '0')
    assert_refused(r, '--infer_backend', f'{backend} is not installed', f'pip install "lmforge[{backend}]"',
                   'CUDA')
    assert 'no-model' not in r.stderr and '[lmforge] serving' not in r.stdout


def test_missing_backend_is_refused_by_infer_before_the_data_is_read(tmp_path):
    if installed('vllm'):
        pytest.skip('vllm is installed here')
    r = lmforge('infer', '--model', str(tmp_path / 'no-model'), '--infer_backend', 'vllm', '--val_dataset',
                str(tmp_path / 'no-data.jsonl'))
    assert_refused(r, '--infer_backend: vllm is not installed')
    assert 'no-data' not in r.stderr


def test_backend_without_cuda_is_refused(tmp_path):
    """A stand-in `sglang` package (the real one needs CUDA to install): the engine is importable, the machine has
    no GPU, so the CLI says so instead of failing deep inside the library."""
    import torch

    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    (tmp_path / 'sglang').mkdir()
    (tmp_path / 'sglang' / '__init__.py').write_text('raise RuntimeError("a stand-in: must not be imported")\n')
    r = lmforge('serve', '--model', str(tmp_path / 'no-model'), '--infer_backend', 'sglang',
                env={'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'})
    assert_refused(r, '--infer_backend: sglang needs a CUDA GPU', 'use --infer_backend pt')


def test_backend_flags():
    from lmforge.args import parse_args
    from lmforge.args.serve import ServeArgs

    args = parse_args(ServeArgs, ['--model', 'm', '--infer_backend', 'vllm', '--engine_kwargs',
                                  '{"gpu_memory_utilization": 0.5}'])
    assert args.infer_backend == 'vllm' and args.engine_kwargs == {'gpu_memory_utilization': 0.5}
    with pytest.raises(ArgumentError, match='--engine_kwargs: are settings of the vllm/sglang/lmdeploy'):
        parse_args(ServeArgs, ['--model', 'm', '--engine_kwargs', '{"a": 1}'])
    with pytest.raises(ArgumentError, match="--infer_backend: invalid value 'vlm'.*Did you mean 'vllm'"):
        parse_args(ServeArgs, ['--model', 'm', '--infer_backend', 'vlm'])
    check_backend('pt')
    assert parse_args(ServeArgs, ['--model', 'm', '--admit_after', '0']).admit_after == 0
    with pytest.raises(ArgumentError, match='--admit_after: must be >= 0'):
        parse_args(ServeArgs, ['--model', 'm', '--admit_after', '-1'])


def test_request_settings_map_to_each_librarys_sampling_parameters():
    cfg = RequestConfig(max_new_tokens=7, temperature=0.7, top_p=0.9, top_k=0, repetition_penalty=1.1,
                        presence_penalty=0.5, frequency_penalty=-0.25, seed=3, stop=['\n\n', 'END'], logprobs=True,
                        top_logprobs=2, logit_bias={5: -100.0})
    stop_ids = [2, 7]
    v = vllm_sampling(cfg, stop_ids)
    assert v == dict(n=1, max_tokens=7, temperature=0.7, top_p=0.9, top_k=-1, repetition_penalty=1.1,
                     presence_penalty=0.5, frequency_penalty=-0.25, seed=3, stop=['\n\n', 'END'],
                     stop_token_ids=[2, 7], skip_special_tokens=True, logprobs=2, logit_bias={5: -100.0})
    greedy = vllm_sampling(RequestConfig(max_new_tokens=3, top_k=40), stop_ids)
    assert greedy['temperature'] == 0.0 and greedy['top_k'] == 40 and greedy['stop'] is None
    assert 'logprobs' not in greedy and 'logit_bias' not in greedy and greedy['seed'] is None

    s = sglang_sampling(cfg, stop_ids, fields={'max_new_tokens', 'sampling_seed'})
    assert s == dict(max_new_tokens=7, temperature=0.7, top_p=0.9, top_k=-1, repetition_penalty=1.1,
                     presence_penalty=0.5, frequency_penalty=-0.25, stop_token_ids=[2, 7], skip_special_tokens=True,
                     stop=['\n\n', 'END'], logit_bias={'5': -100.0}, sampling_seed=3)
    assert 'sampling_seed' not in sglang_sampling(cfg, stop_ids, fields={'max_new_tokens'})  # older SGLang

    lm = lmdeploy_generation(cfg, stop_ids)
    assert lm == dict(n=1, max_new_tokens=7, do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                      repetition_penalty=1.1, random_seed=3, stop_token_ids=[2, 7], skip_special_tokens=True,
                      logprobs=2)
    lm_greedy = lmdeploy_generation(RequestConfig(logprobs=True, top_logprobs=0), stop_ids)
    assert lm_greedy['do_sample'] is False and lm_greedy['logprobs'] == 1 and 'stop_words' not in lm_greedy


def test_library_logprobs_become_token_logprobs():
    vllm_style = {4: SimpleNamespace(logprob=-0.1, rank=1), 9: SimpleNamespace(logprob=-2.5, rank=2),
                  1: SimpleNamespace(logprob=-7.0, rank=40)}  # the sampled token 1 is outside the top 2
    lp = token_logprob(1, vllm_style, 2)
    assert (lp.token_id, lp.logprob, lp.top) == (1, -7.0, [(4, -0.1), (9, -2.5)])
    assert token_logprob(4, {4: -0.5, 3: -1.5}, 0).top == []
    assert token_logprob(8, {}, 3).logprob == float('-inf')


def adapter(path, **config) -> str:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'adapter_config.json'), 'w') as f:
        json.dump({'peft_type': 'LORA', 'r': 8, **config}, f)
    return str(path)


def test_lora_adapters_one_per_request(tmp_path):
    a, b = adapter(tmp_path / 'a', r=16), adapter(tmp_path / 'b', r=40)
    assert lora_table([], {'math': a, 'code': b}, 'vllm') == ({'math': a, 'code': b}, None)
    table, default = lora_table([a], {}, 'vllm')  # a plain --adapters dir / a LoRA --model: every request's LoRA
    assert table == {default: a} and default == 'lmforge-default'
    assert vllm_lora_rank({'math': a, 'code': b}) == 64
    with pytest.raises(ArgumentError, match=r'--adapters: the sglang engine .* cannot stack .*--merge_lora true'):
        lora_table([a], {'code': b}, 'sglang')
    with pytest.raises(ArgumentError, match='cannot stack'):
        lora_table([a, b], {}, 'vllm')
    dora = adapter(tmp_path / 'dora', use_dora=True)
    with pytest.raises(ArgumentError, match=r'--adapters: x=.*dora is a DoRA adapter; .* plain LoRA only'):
        lora_table([], {'x': dora}, 'vllm')


class Shared(BackendEngine):
    """The part the vLLM/SGLang/LMDeploy engines share, without a library under it: checkpoint, template, stop ids,
    adapters, and what to refuse. ``refuse``: the RequestConfig settings its library would lack."""

    backend = 'lmdeploy'

    def __init__(self, model, refuse=(), **kwargs):
        self.unsupported_settings = refuse
        self._open(model, kwargs.get('adapters'), kwargs.get('named_adapters'), kwargs.get('template'),
                   kwargs.get('system'), False, None, None, False)


@pytest.fixture(scope='module')
def shared(qwen2_dir):
    return Shared(qwen2_dir, refuse=('presence_penalty', 'logit_bias'), system='Be brief.')


def test_prompts_and_stop_ids_are_the_pt_engines(qwen2_dir, shared):
    pt = PtEngine(qwen2_dir, system='Be brief.')
    for messages in ([{'role': 'user', 'content': 'Last letter: abc'}],
                     [{'role': 'system', 'content': 'Other.'}, {'role': 'user', 'content': 'x'},
                      {'role': 'assistant', 'content': 'y'}, {'role': 'user', 'content': 'z'}]):
        assert shared.prompt_ids(InferRequest(messages)) == pt.prompt_ids(InferRequest(messages))
    assert shared.stop_ids == pt.stop_ids and shared.stop_ids  # the template's end-of-turn token included
    assert shared.max_model_len == pt.max_model_len and shared.hidden_size == pt.hidden_size
    assert shared.adapter_names == [] and shared.adapter_for(None) is None
    with pytest.raises(ValueError, match="no adapter named 'math'"):
        shared.adapter_for('math')


def test_a_sequence_fed_token_by_token_streams_like_the_pt_engine(qwen2_dir, shared):
    """What every optional engine does with the ids its library generates: push them into the same Sequence the
    pt engine fills, so text, stop strings and finish reasons come out the same."""
    pt = PtEngine(qwen2_dir)
    request = InferRequest([{'role': 'user', 'content': 'Last letter: abc'}])
    config = RequestConfig(max_new_tokens=10)
    row = pt.new_sequence(pt.prompt_ids(request), config)
    pt.generate_rows([row])
    pieces = []
    fed = shared.new_sequence(shared.prompt_ids(request), config, lambda seq, text, lps: pieces.append(text))
    for token_id in row.token_ids:
        fed.push(token_id)
    fed.finish('length')
    assert (fed.text, fed.finish_reason, ''.join(pieces)) == (row.text, row.finish_reason, row.text)


def test_unsupported_features_are_400s_from_the_server(shared):
    """Refused in OpenAI's error shape (a 400 the SDK raises as BadRequestError), not a 500, not silently ignored."""
    from lmforge.serve import create_app, start_server

    with start_server(create_app(shared, served_model_name='tiny')) as handle:
        client = openai.OpenAI(base_url=handle.url, api_key='none', max_retries=0, timeout=30)
        hi = [{'role': 'user', 'content': 'hi'}]
        for kwargs, param in ((dict(presence_penalty=0.5), 'presence_penalty'),
                              (dict(logit_bias={'5': 1.0}), 'logit_bias')):
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model='tiny', messages=hi, **kwargs)
            assert e.value.body['param'] == param and 'not supported by the lmdeploy engine' in e.value.message
        with pytest.raises(openai.BadRequestError, match='embeddings .*not supported by the lmdeploy engine'):
            client.embeddings.create(model='tiny', input='hello')
        with pytest.raises(openai.BadRequestError, match='prompt logprobs .*not supported') as e:
            client.completions.create(model='tiny', prompt='hello', echo=True, logprobs=1, max_tokens=1)
        assert e.value.body['code'] == 'unsupported_value'
    with pytest.raises(LmforgeError, match='presence_penalty is not supported'):  # outside the server: a CLI error
        shared.new_sequence([1, 2], RequestConfig(presence_penalty=1.0))


@pytest.mark.gpu
def test_vllm_serves_a_tiny_model_to_the_openai_client(tmp_path, tokenizer):
    """On a CUDA machine with vLLM: chat (plain, streamed, n with a seed, logprobs, stop), completions with echo
    and logprobs, and a named LoRA adapter, through the real server."""
    pytest.importorskip('vllm')
    from peft import LoraConfig, get_peft_model

    from lmforge.demo.build import build_model, save_model_dir
    from lmforge.infer.backends import make_engine
    from lmforge.serve import create_app, start_server

    # head_dim 64: what vLLM's attention kernels take
    model = build_model(tokenizer, 'qwen2', hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                        intermediate_size=256)
    model_dir = save_model_dir(str(tmp_path / 'tiny'), model, tokenizer)
    lora = get_peft_model(model, LoraConfig(r=8, target_modules=['q_proj', 'v_proj'], init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / 'lora'))
    engine = make_engine('vllm', model=model_dir, torch_dtype='bfloat16', named_adapters={'ad': str(tmp_path / 'lora')},
                         engine_kwargs={'gpu_memory_utilization': 0.3, 'enforce_eager': True})
    hi = [{'role': 'user', 'content': 'Last letter: abc'}]
    with start_server(create_app(engine, served_model_name='tiny')) as handle:
        client = openai.OpenAI(base_url=handle.url, api_key='none', max_retries=0, timeout=120)
        plain = client.chat.completions.create(model='tiny', messages=hi, max_tokens=12, temperature=0)
        assert plain.choices[0].finish_reason in ('stop', 'length')
        assert plain.usage.prompt_tokens == len(engine.prompt_ids(InferRequest(hi)))
        streamed = client.chat.completions.create(model='tiny', messages=hi, max_tokens=12, temperature=0,
                                                  stream=True)
        assert ''.join(c.choices[0].delta.content or '' for c in streamed if c.choices) == \
            plain.choices[0].message.content
        sampled = client.chat.completions.create(model='tiny', messages=hi, max_tokens=8, temperature=1.0, n=3,
                                                 seed=7, logprobs=True, top_logprobs=2)
        again = client.chat.completions.create(model='tiny', messages=hi, max_tokens=8, temperature=1.0, n=3,
                                               seed=7, logprobs=True, top_logprobs=2)
        assert [c.message.content for c in sampled.choices] == [c.message.content for c in again.choices]
        for choice in sampled.choices:
            for entry in choice.logprobs.content:
                assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        text = plain.choices[0].message.content
        if len(text) > 3:
            cut = client.chat.completions.create(model='tiny', messages=hi, max_tokens=12, temperature=0,
                                                 stop=[text[2:4]])
            assert cut.choices[0].message.content == text[:text.index(text[2:4])]
            assert cut.choices[0].finish_reason == 'stop'
        echo = client.completions.create(model='tiny', prompt='Last letter: abc', echo=True, logprobs=1,
                                         max_tokens=0)
        lps = echo.choices[0].logprobs
        assert lps.token_logprobs[0] is None and all(v <= 0 for v in lps.token_logprobs[1:])
        assert client.chat.completions.create(model='ad', messages=hi, max_tokens=4).model == 'ad'
