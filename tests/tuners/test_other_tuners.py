"""lmforge's own tuners (full with freezing, bottleneck adapters, LLaMA Pro block expansion), the optimisation
methods (LISA, NEFTune, LoRA+, GaLore), and the CUDA-only features (QLoRA, Liger): trained briefly through
`lmforge sft`, or refused with a clear error where this machine cannot run them."""
import importlib.util
import os

import pytest

from lmforge.errors import ArgumentError
from tests.tuners.conftest import fact_batch, fact_loss, logged_losses, starting_point, train


def _changed(before, after) -> set:
    import torch

    sb, sa = before.state_dict(), after.state_dict()
    assert set(sb) == set(sa), sorted(set(sb) ^ set(sa))[:5]
    return {k for k in sb if not torch.equal(sb[k], sa[k])}


def _falls(losses, factor=0.97):
    assert sum(losses[-3:]) < factor * sum(losses[:3]), losses


def test_full_with_frozen_and_trainable_patterns(tmp_path, qwen2_trained_dir, facts_file, tokenizer):
    from transformers import AutoModelForCausalLM

    kw = dict(freeze_parameters=[r'model\.layers\.\d+\.', 'model.embed_tokens'],
              trainable_parameters=[r'model\.layers\.1\.mlp\.'], learning_rate=3e-3)
    result = train(qwen2_trained_dir, facts_file, tmp_path / 'out', 'full', **kw)
    _falls(logged_losses(result))
    before = starting_point(qwen2_trained_dir, 'full', **kw)
    trainable = {n for n, p in before.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in before.named_parameters()
                         if n.startswith('model.layers.1.mlp.') or n == 'model.norm.weight'}
    after = AutoModelForCausalLM.from_pretrained(result['last_checkpoint'])
    changed = _changed(before, after)
    assert changed == trainable
    batch = fact_batch(tokenizer)
    assert fact_loss(after, batch) < fact_loss(before, batch)


def test_full_freezing_everything_is_an_error(tmp_path, qwen2_dir, facts_file):
    with pytest.raises(ArgumentError, match='froze every parameter'):
        train(qwen2_dir, facts_file, tmp_path / 'out', 'full', freeze_parameters=['model', 'lm_head'])
    with pytest.raises(ArgumentError, match='matches no parameter'):
        train(qwen2_dir, facts_file, tmp_path / 'out2', 'full', freeze_parameters=['transformer.h.0'])


def test_bottleneck_adapter_trains_alone_and_reloads(tmp_path, qwen2_trained_dir, facts_file, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.models import load_model

    kw = dict(adapter_length=16, learning_rate=1e-2)
    before = starting_point(qwen2_trained_dir, 'adapter', **kw)
    base = load_model(qwen2_trained_dir, device='cpu')
    batch = fact_batch(tokenizer)
    assert abs(fact_loss(before, batch) - fact_loss(base, batch)) < 1e-6  # zero-initialised: same function
    result = train(qwen2_trained_dir, facts_file, tmp_path / 'out', 'adapter', **kw)
    _falls(logged_losses(result))
    ckpt = result['last_checkpoint']
    after = load_model(ckpt, device='cpu')  # lmforge's loader re-inserts the adapters
    trainable = {n for n, p in before.named_parameters() if p.requires_grad}
    assert trainable and all('.mlp_adapter.' in n for n in trainable)
    assert _changed(before, after) == trainable
    assert fact_loss(after, batch) < 0.97 * fact_loss(base, batch)
    # plain transformers loads the base weights (and skips the adapters): the base is untouched
    plain = AutoModelForCausalLM.from_pretrained(ckpt)
    assert all(torch.equal(p, dict(base.named_parameters())[n]) for n, p in plain.named_parameters())


def test_llamapro_adds_identity_blocks_and_trains_only_them(tmp_path, qwen2_trained_dir, facts_file, tokenizer):
    from transformers import AutoModelForCausalLM

    from lmforge.models import load_model

    kw = dict(llamapro_num_new_blocks=2, learning_rate=1e-2)
    before = starting_point(qwen2_trained_dir, 'llamapro', **kw)
    assert before.config.num_hidden_layers == 4
    batch = fact_batch(tokenizer)
    base = load_model(qwen2_trained_dir, device='cpu')
    assert abs(fact_loss(before, batch) - fact_loss(base, batch)) < 1e-6  # new blocks are the identity at step 0
    trainable = {n for n, p in before.named_parameters() if p.requires_grad}
    assert {n.split('.')[2] for n in trainable} == {'1', '3'}  # one new block after each original one
    result = train(qwen2_trained_dir, facts_file, tmp_path / 'out', 'llamapro', **kw)
    _falls(logged_losses(result))
    after = AutoModelForCausalLM.from_pretrained(result['last_checkpoint'])  # an ordinary 4-layer model
    assert after.config.num_hidden_layers == 4
    changed = _changed(before, after)
    assert changed <= trainable and len(changed) >= len(trainable) // 2
    assert fact_loss(after, batch) < 0.97 * fact_loss(base, batch)


def test_lisa_trains_sampled_layers(tmp_path, qwen2_trained_dir, facts_file):
    from lmforge.models import load_model
    from lmforge.tuners.features import LisaCallback

    model = load_model(qwen2_trained_dir, device='cpu')
    lisa = LisaCallback(model, n=1, interval=4, seed=42)
    lisa._sample(0)
    first = list(lisa.active)
    layers = model.model.layers
    assert [all(p.requires_grad for p in layer.parameters()) for layer in layers].count(True) == 1
    assert model.model.embed_tokens.weight.requires_grad and model.model.norm.weight.requires_grad
    lisa._sample(3)
    assert lisa.active == first  # same interval, same layers (resuming samples the same)
    picks = set()
    for step in range(0, 40, 4):
        lisa._sample(step)
        picks.add(tuple(lisa.active))
    assert len(picks) == 2  # both layers get their turn
    result = train(qwen2_trained_dir, facts_file, tmp_path / 'out', 'full', lisa_activated_layers=1,
                   lisa_step_interval=4, learning_rate=3e-3)
    _falls(logged_losses(result))
    with pytest.raises(ArgumentError, match='LISA samples layers of full fine-tuning'):
        train(qwen2_trained_dir, facts_file, tmp_path / 'out2', 'lora', lisa_activated_layers=1)


def test_neftune_adds_noise_while_training(tmp_path, qwen2_trained_dir, facts_file):
    plain = train(qwen2_trained_dir, facts_file, tmp_path / 'plain', 'lora', max_steps=1)
    noisy = train(qwen2_trained_dir, facts_file, tmp_path / 'noisy', 'lora', neftune_noise_alpha=50.0, max_steps=8)
    first_plain, first_noisy = logged_losses(plain)[0], logged_losses(noisy)[0]
    assert first_noisy != pytest.approx(first_plain, abs=1e-4)  # same seed and batch: only the noise differs
    from lmforge.tuners.features import training_setup

    class A:
        tuner_type, neftune_noise_alpha = 'lora', 5.0

    assert training_setup(A(), None).training_args == {'neftune_noise_alpha': 5.0}


def test_lora_plus_gives_b_a_larger_learning_rate(qwen2_trained_dir):
    from transformers import TrainingArguments

    from lmforge.tuners.features import TrainingSetup

    model = starting_point(qwen2_trained_dir, 'lora', lorap_lr_ratio=16.0)
    opt = TrainingSetup(lorap_lr_ratio=16.0).optimizer(model, TrainingArguments(output_dir='x', learning_rate=1e-4,
                                                                                 report_to='none'))
    by_id = {id(p): n for n, p in model.named_parameters()}
    lrs = {}
    for group in opt.param_groups:
        for p in group['params']:
            lrs[by_id[id(p)]] = group['lr']
    assert {lr for n, lr in lrs.items() if 'lora_A' in n} == {1e-4}
    b_lrs = [lr for n, lr in lrs.items() if 'lora_B' in n]
    assert b_lrs and all(lr == pytest.approx(1.6e-3) for lr in b_lrs)


def test_galore(tmp_path, qwen2_dir, facts_file):
    if importlib.util.find_spec('galore_torch') is None:
        with pytest.raises(ArgumentError, match='pip install galore-torch'):
            train(qwen2_dir, facts_file, tmp_path / 'out', 'full', use_galore=True)
        return
    result = train(qwen2_dir, facts_file, tmp_path / 'out', 'full', use_galore=True, galore_rank=8,
                   galore_update_proj_gap=5, learning_rate=3e-3)
    _falls(logged_losses(result))


def test_flag_conflicts_are_errors_naming_the_flag():
    from lmforge.args import SftArgs, from_kwargs

    base = dict(model='m', dataset=['d.jsonl'])
    cases = [
        (dict(tuner_type='full', use_dora=True), '--use_dora'),
        (dict(tuner_type='full', lorap_lr_ratio=16), '--lorap_lr_ratio'),
        (dict(tuner_type='lora', use_galore=True), '--use_galore'),
        (dict(tuner_type='lora', freeze_parameters=['model.']), '--freeze_parameters'),
        (dict(tuner_type='full', freeze_parameters=['(']), 'not a valid regex'),
        (dict(quant_bits=4), '--quant_bits: needs --quant_method'),
        (dict(quant_method='eetq', quant_bits=4), 'eetq quantizes to 8 bits'),
        (dict(tuner_type='full', quant_method='bnb', quant_bits=4), 'trains adapters only'),
        (dict(tuner_type='vera', init_weights='pissa'), '--init_weights'),
        (dict(tuner_type='reft'), 'pyreft'),
    ]
    for kw, message in cases:
        with pytest.raises(ArgumentError, match=message.replace('(', r'\(')):
            from_kwargs(SftArgs, **base, **kw)
    assert from_kwargs(SftArgs, **base, tuner_type='adalora').lr == 1e-4
    assert from_kwargs(SftArgs, **base, tuner_type='full').lr == 1e-5


def test_cuda_only_features_are_clear_errors_on_cpu(tmp_path, qwen2_dir, facts_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    with pytest.raises(ArgumentError, match='needs a CUDA GPU'):
        train(qwen2_dir, facts_file, tmp_path / 'a', 'lora', quant_method='bnb', quant_bits=4)
    with pytest.raises(ArgumentError, match='use_liger_kernel'):
        train(qwen2_dir, facts_file, tmp_path / 'b', 'lora', use_liger_kernel=True)
    assert not os.path.exists(tmp_path / 'a' / 'args.json')  # refused before anything ran


@pytest.mark.gpu
@pytest.mark.parametrize('method,bits', [('bnb', 4), ('bnb', 8), ('hqq', 4), ('eetq', 8)])
def test_quantized_base_lora_trains_on_gpu(method, bits, tmp_path, qwen2_trained_dir, facts_file):
    from peft import PeftModel

    from lmforge.models import load_model
    from lmforge.tuners.quant import PACKAGES

    if importlib.util.find_spec(PACKAGES[method][0]) is None:
        pytest.skip(f'{PACKAGES[method][1]} is not installed')
    result = train(qwen2_trained_dir, facts_file, tmp_path / 'out', 'lora', quant_method=method, quant_bits=bits,
                   torch_dtype='bfloat16', gradient_checkpointing=True)
    _falls(logged_losses(result))
    ckpt = result['last_checkpoint']
    assert 'adapter_model.safetensors' in os.listdir(ckpt)
    PeftModel.from_pretrained(load_model(qwen2_trained_dir, device='cpu'), ckpt).merge_and_unload()


@pytest.mark.gpu
def test_liger_kernel_trains_on_gpu(tmp_path, qwen2_trained_dir, facts_file):
    if importlib.util.find_spec('liger_kernel') is None:
        pytest.skip('liger-kernel is not installed')
    result = train(qwen2_trained_dir, facts_file, tmp_path / 'out', 'lora', use_liger_kernel=True,
                   torch_dtype='bfloat16')
    _falls(logged_losses(result))
