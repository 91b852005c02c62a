"""lm-evaluation-harness: YAML tasks over local jsonl files against the model and against `lmforge serve`
(local-completions for log-likelihoods, local-chat-completions for generation), and offline hub tasks."""
from __future__ import annotations

import pytest

from lmforge.errors import DataError
from lmforge.eval.harness import EvalError


@pytest.fixture(scope='module')
def served(trained_dir):
    from lmforge.infer.engine import PtEngine
    from lmforge.serve import create_app, start_server

    handle = start_server(create_app(PtEngine(trained_dir), served_model_name='facts'))
    yield handle
    handle.stop()


def test_local_yaml_task_direct_and_through_the_server(eval_data, trained_dir, served, tmp_path):
    """The same tasks give the same scores on the loaded model and through the OpenAI-compatible server."""
    from lmforge import eval as evaluate

    direct = evaluate(model=trained_dir, eval_dataset=[eval_data['tasks_dir']], eval_output_dir=str(tmp_path),
                      apply_chat_template=True)  # a directory of YAML tasks: all of them
    assert direct['results'] == {'mc_gen': {'exact_match': 1.0}, 'mc_loglik': {'acc': 1.0}}
    assert direct['n_samples'] == {'mc_gen': 8, 'mc_loglik': 8}
    assert direct['backends'] == {'mc_loglik': 'lm_eval', 'mc_gen': 'lm_eval'}
    loglik = evaluate(eval_url=served.url, model=trained_dir, eval_dataset=[eval_data['loglik_yaml']],
                      eval_output_dir=str(tmp_path), apply_chat_template=True, eval_limit=4)
    assert loglik['served_model'] == 'facts' and loglik['n_samples'] == {'mc_loglik': 4}
    assert loglik['results']['mc_loglik'] == {'acc': 1.0}
    chat = evaluate(eval_url=served.url, eval_url_api='chat', eval_dataset=[eval_data['gen_yaml']],
                    eval_output_dir=str(tmp_path), eval_limit=4)
    assert chat['results']['mc_gen'] == {'exact_match': 1.0}


def test_server_log_likelihoods_match_the_model(trained_dir, served):
    """Request by request: local-completions' (log-likelihood, is-greedy) through the server equal the HF model's."""
    from lm_eval.api.instance import Instance

    from lmforge.eval.harness import api_lm, hf_lm
    from lmforge.infer.engine import PtEngine

    from lmforge.eval.custom import mc_prompt

    engine = PtEngine(trained_dir)
    prompt = engine.tokenizer.apply_chat_template(
        [{'role': 'user', 'content': mc_prompt('Code for abc', ['gab', 'fed', 'hhe', 'cab'])}], tokenize=False,
        add_generation_prompt=True)
    pairs = [(prompt, 'B'), (prompt, 'A'), ('Code for', ' hac')]
    requests = [Instance(request_type='loglikelihood', doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    direct = hf_lm(engine.model, engine.tokenizer, 4).loglikelihood(requests)
    remote = api_lm(served.url, 'completions', 'facts', trained_dir, None, 2048, 16).loglikelihood(requests)
    assert [g for _, g in direct] == [g for _, g in remote]
    assert direct[0][0] > direct[1][0] + 5  # the trained answer is far more likely than another
    for (a, _), (b, _) in zip(direct, remote):
        assert a == pytest.approx(b, abs=1e-3)


def test_hub_task_offline_says_what_to_download(qwen2_dir, monkeypatch, tmp_path, capsys):
    from lmforge.cli import main

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    monkeypatch.setattr('lmforge.infer.engine.PtEngine.__init__', lambda *a, **k: pytest.fail('model loaded'))
    code = main(['eval', '--model', qwen2_dir, '--eval_dataset', 'arc', '--eval_output_dir', str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert 'allenai/ai2_arc' in err and 'hf download allenai/ai2_arc --repo-type dataset' in err
    assert 'ARC-Easy' in err and 'ARC-Challenge' in err  # `arc` is ai2_arc: both of its tasks


def test_unknown_task_has_a_did_you_mean(qwen2_dir, tmp_path):
    from lmforge import eval as evaluate

    with pytest.raises(DataError, match='did you mean.*hellaswag'):
        evaluate(model=qwen2_dir, eval_dataset=['hellaswagg'], eval_output_dir=str(tmp_path))


def test_unreachable_server(tmp_path, eval_data):
    from lmforge import eval as evaluate

    with pytest.raises(EvalError, match='cannot reach the server'):
        evaluate(eval_url='http://127.0.0.1:9/v1', eval_dataset=[eval_data['qa']], eval_output_dir=str(tmp_path))


def test_completions_api_needs_a_tokenizer(eval_data, tmp_path):
    from lmforge import eval as evaluate

    with pytest.raises(EvalError, match='needs the model.s tokenizer'):
        evaluate(eval_url='http://127.0.0.1:9/v1', eval_dataset=[eval_data['loglik_yaml']],
                 eval_output_dir=str(tmp_path))
