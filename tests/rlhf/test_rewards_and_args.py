"""The built-in reward functions, user plugins, and the rlhf arguments' checks."""
import pytest

from lmforge.args.parse import from_kwargs
from lmforge.args.rlhf import RlhfArgs
from lmforge.errors import ArgumentError


def args(**kw):
    base = dict(model='m', dataset=['d.jsonl'])
    return from_kwargs(RlhfArgs, **{**base, **kw})


def msg(text):
    return [{'role': 'assistant', 'content': text}]


def test_accuracy_matches_math_answers():
    from lmforge.rlhf.rewards import answers_match, make_accuracy

    assert answers_match('The sum is \\boxed{12}.', '12')
    assert answers_match('<answer> 1,000 </answer>', '#### 1000')
    assert answers_match('so x = 0.5', '\\frac{1}{2}')
    assert answers_match('It is 7', '7') and not answers_match('It is 7, not 8', '7')
    assert answers_match('Paris.', 'paris') and not answers_match('Lyon', 'Paris')
    accuracy = make_accuracy(args())
    assert accuracy([msg('4'), '5', msg('\\boxed{4}')], solution=['4', '4', '4']) == [1.0, 0.0, 1.0]
    from lmforge.errors import DataError
    with pytest.raises(DataError, match='solution'):
        accuracy([msg('4')])


def test_format_length_cosine_repetition():
    from lmforge.rlhf.rewards import make_cosine, make_format, make_length, make_repetition

    fmt = make_format(args())
    assert fmt([msg('<think>a</think>\n<answer>4</answer>'), msg('4')]) == [1.0, 0.0]
    length = make_length(args(max_completion_length=100))  # soft overlong: free up to 75 tokens, -1 at 100
    assert length([msg('')] * 4, completion_ids=[[0] * 50, [0] * 75, [0] * 90, [0] * 120]) == [0.0, 0.0, -0.6, -1.0]
    cosine = make_cosine(args(max_completion_length=100))
    short_right, long_right, short_wrong, long_wrong = cosine(
        [msg('4'), msg('4'), msg('5'), msg('5')], completion_ids=[[0], [0] * 100, [0], [0] * 100],
        solution=['4'] * 4)
    assert short_right == pytest.approx(1.0, abs=1e-3) and long_right == pytest.approx(0.5)
    assert short_wrong == pytest.approx(-0.5, abs=1e-3) and long_wrong == pytest.approx(0.0)
    rep = make_repetition(args())
    assert rep([msg('a b c d e f'), msg('a b c a b c a b c')]) == [0.0, pytest.approx(-4 / 7)]


def test_plugins_register_and_resolve(tmp_path):
    from lmforge.rlhf.plugins import load_plugins, resolve_reward_funcs
    from lmforge.rlhf.rewards import REWARDS

    plugin = tmp_path / 'my_rewards.py'
    plugin.write_text(
        'from lmforge.rlhf.rewards import register_reward\n'
        '@register_reward("shouty")\n'
        'def shout(completions, **kwargs):\n'
        '    return [float(c[0]["content"].isupper()) for c in completions]\n'
        'def short(completions, **kwargs):\n'
        '    return [-len(c[0]["content"]) for c in completions]\n'
        'class Const:\n'
        '    def __call__(self, completions, **kwargs):\n'
        '        return [1.0] * len(completions)\n')
    try:
        modules = load_plugins([str(plugin)])
        funcs = resolve_reward_funcs(['shouty', 'short', f'{plugin}:Const', 'accuracy'], args(), modules)
        assert [f.__name__ for f in funcs] == ['shouty', 'short', 'Const', 'accuracy']
        out = [f([msg('HI'), msg('ok')], solution=['HI', 'x']) for f in funcs]
        assert out == [[1.0, 0.0], [-2, -2], [1.0, 1.0], [1.0, 0.0]]
        # module:function from an importable module
        (funcs,) = [resolve_reward_funcs(['lmforge.rlhf.rewards:completion_text'], args(), [])]
        assert funcs[0]('x') == 'x'
        with pytest.raises(ArgumentError, match="unknown reward 'acuracy'. Did you mean 'accuracy'"):
            resolve_reward_funcs(['acuracy'], args(), modules)
    finally:
        REWARDS.pop('shouty', None)
    bad = tmp_path / 'broken.py'
    bad.write_text('raise RuntimeError("boom")\n')
    with pytest.raises(ArgumentError, match='broken.py failed to load: RuntimeError: boom'):
        load_plugins([str(bad)])


@pytest.mark.parametrize('kw, flag', [
    (dict(rlhf_type='grpo'), 'reward_funcs'),
    (dict(rlhf_type='grpo', reward_funcs=['accuracy'], num_generations=3, per_device_train_batch_size=8),
     'num_generations'),
    (dict(rlhf_type='gkd'), 'teacher_model'),
    (dict(rlhf_type='dpo', loss_type=['simpo']), 'loss_type'),
    (dict(rlhf_type='orpo', loss_type=['sigmoid']), 'loss_type'),
    (dict(rlhf_type='dpo', loss_type=['sigmoid', 'sft'], loss_weights=[1.0]), 'loss_weights'),
    (dict(rlhf_type='kto', rpo_alpha=1.0), 'rpo_alpha'),
    (dict(rlhf_type='dpo', beta=0), 'beta'),
    (dict(rlhf_type='orpo', ref_model='x'), 'ref_model'),
    (dict(rlhf_type='dpo', reward_funcs=['accuracy']), 'reward_funcs'),
    (dict(rlhf_type='ppo', reward_model=['rm'], gradient_accumulation_steps=2), 'gradient_accumulation_steps'),
    (dict(rlhf_type='dpo', packing=True), 'packing'),
    (dict(rlhf_type='dpo', use_vllm=True), 'use_vllm'),
])
def test_argument_errors_name_the_flag(kw, flag):
    with pytest.raises(ArgumentError) as e:
        args(**kw)
    assert e.value.flag == flag, str(e.value)


def test_defaults_per_method():
    assert args(rlhf_type='dpo').beta_value == 0.1
    assert args(rlhf_type='simpo').beta_value == 2.0
    grpo = dict(rlhf_type='grpo', reward_funcs=['accuracy'], per_device_train_batch_size=8)
    assert args(**grpo).beta_value == 0.04
    assert args(**grpo, beta=0).beta_value == 0


def test_cli_lists_rlhf_and_its_help_imports_no_torch():
    import subprocess
    import sys

    code = ('import sys; from lmforge.cli import main; main(["rlhf", "--help"]); '
            'assert "torch" not in sys.modules and "trl" not in sys.modules')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '--rlhf_type' in r.stdout and '--reward_funcs' in r.stdout and '--teacher_model' in r.stdout


def test_sdk_name_works_before_and_after_the_package_loads():
    """`lmforge.rlhf` is both the SDK function and the package of the implementation; either way it runs rlhf."""
    import lmforge
    import lmforge.rlhf.rewards  # noqa: F401 - from here on, lmforge.rlhf is the package
    from lmforge import rlhf
    from lmforge.workflows.rlhf import rlhf as workflow

    assert callable(rlhf) and callable(lmforge.rlhf)
    with pytest.raises(ArgumentError, match='--rlhf_type: invalid value'):
        rlhf(rlhf_type='ppx', model='m', dataset=['d.jsonl'])
    assert workflow.__doc__ and 'rlhf_type' in workflow.__doc__
