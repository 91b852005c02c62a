"""The peft-based tuners (LoRA and its variants, AdaLoRA, VeRA, BOFT, FourierFT, MiSS/Bone, LongLoRA) trained briefly
through `lmforge sft` on the memorisation facts: the loss falls, only the method's parameters change, the checkpoint
reloads on the original base (and has learned), and the adapters merge into the weights."""
import os

import pytest

from tests.tuners.conftest import fact_batch, fact_loss, logged_losses, starting_point, train

CASES = {
    # name: (tuner, extra sft arguments, largest allowed ratio of reloaded to base fact loss)
    'lora-dora-rslora': ('lora', dict(use_dora=True, use_rslora=True, lora_rank=8), 0.95),
    'lora-plus-gaussian': ('lora', dict(lorap_lr_ratio=4.0, init_weights='gaussian', learning_rate=5e-3), 0.95),
    'lora-pissa': ('lora', dict(init_weights='pissa', learning_rate=5e-3), 0.95),
    'lora-olora': ('lora', dict(init_weights='olora', learning_rate=5e-3), 0.95),
    'adalora': ('adalora', dict(adalora_init_r=8, adalora_target_r=4, adalora_tinit=2, adalora_tfinal=2,
                                learning_rate=2e-2), 0.97),
    'vera': ('vera', dict(vera_rank=32, learning_rate=5e-2), 0.97),
    'boft': ('boft', dict(boft_block_size=4, learning_rate=2e-2), 0.97),
    'fourierft': ('fourierft', dict(fourier_n_frequency=300, fourier_scaling=100.0, learning_rate=5e-2), 0.95),
    'miss': ('miss', dict(lora_rank=16, learning_rate=1e-2), 0.95),
    'longlora': ('longlora', dict(longlora_group_ratio=0.5, learning_rate=5e-3), 0.95),
}


@pytest.mark.parametrize('case', list(CASES))
def test_peft_tuner_trains_only_its_parameters_reloads_and_merges(case, tmp_path, qwen2_trained_dir, facts_file,
                                                                   tokenizer):
    import torch
    from peft import PeftModel

    from lmforge.models import load_model

    tuner, kw, max_ratio = CASES[case]
    result = train(qwen2_trained_dir, facts_file, tmp_path / 'out', tuner, **kw)
    losses = logged_losses(result)
    assert sum(losses[-3:]) < sum(losses[:3]) * 0.97, losses

    ckpt = result['last_checkpoint']
    files = set(os.listdir(ckpt))
    assert 'adapter_config.json' in files and 'model.safetensors' not in files  # adapters only

    # only the method's own parameters moved: compare the untrained starting point with the reloaded checkpoint
    before = starting_point(qwen2_trained_dir, tuner, **kw)
    trainable = {n for n, p in before.named_parameters() if p.requires_grad}
    assert trainable
    if tuner == 'longlora':  # trained with shifted sparse attention; embeddings and norms train too
        assert before.get_base_model().config._attn_implementation == 'lmforge_s2attn'
        assert any('embed_tokens' in n for n in trainable) and any('layernorm' in n for n in trainable)
    after = PeftModel.from_pretrained(load_model(qwen2_trained_dir, device='cpu'), ckpt)
    sb, sa = before.state_dict(), after.state_dict()
    assert set(sb) == set(sa)
    changed = {k for k in sb if not torch.equal(sb[k], sa[k])}
    if tuner == 'adalora':  # the rank budget's bookkeeping moves with the ranks
        trainable |= {k for k in sb if '.ranknum.' in k}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    assert len(changed) >= len(trainable) // 2, (len(changed), len(trainable))

    # the reloaded checkpoint has learned the facts
    batch = fact_batch(tokenizer)
    base_loss = fact_loss(load_model(qwen2_trained_dir, device='cpu'), batch)
    tuned_loss = fact_loss(after, batch)
    assert tuned_loss < max_ratio * base_loss, (tuned_loss, base_loss)

    # merging gives the same function without adapters
    after.eval()
    with torch.no_grad():
        expected = after(**{k: v for k, v in batch.items() if k != 'labels'}).logits
        merged = after.merge_and_unload()
        got = merged(**{k: v for k, v in batch.items() if k != 'labels'}).logits
    assert not any('lora_' in n or 'vera_' in n or 'boft_' in n for n, _ in merged.named_parameters())
    assert torch.allclose(expected, got, atol=2e-4), (expected - got).abs().max()


@pytest.mark.gpu
def test_lora_loftq_trains_and_reloads(tmp_path, qwen2_trained_dir, facts_file, tokenizer):
    """LoftQ needs bitsandbytes and CUDA (peft quantizes the weights on the GPU)."""
    from peft import PeftModel

    from lmforge.models import load_model

    result = train(qwen2_trained_dir, facts_file, tmp_path / 'out', 'lora', init_weights='loftq', learning_rate=5e-3)
    losses = logged_losses(result)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    after = PeftModel.from_pretrained(load_model(qwen2_trained_dir, device='cpu'), result['last_checkpoint'])
    batch = fact_batch(tokenizer)
    assert fact_loss(after, batch) < fact_loss(load_model(qwen2_trained_dir, device='cpu'), batch)


def test_loftq_on_cpu_is_a_clear_error(tmp_path, qwen2_dir, facts_file):
    import torch

    from lmforge.errors import ArgumentError

    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    with pytest.raises(ArgumentError, match='loftq initialisation needs a CUDA GPU'):
        train(qwen2_dir, facts_file, tmp_path / 'out', 'lora', init_weights='loftq')


def test_bone_is_miss(tmp_path, qwen2_trained_dir, capsys):
    model = starting_point(qwen2_trained_dir, 'bone', lora_rank=16)
    assert type(model.peft_config['default']).__name__ == 'MissConfig'
    assert 'renamed Bone to MiSS' in capsys.readouterr().out


def test_longlora_attention_is_exact_with_one_group_and_grouped_otherwise():
    """S2-Attn with one group and no shift is plain causal attention; with groups, a token never sees a later one
    (changing a later token leaves earlier outputs unchanged) and attention stays inside groups."""
    import torch
    import torch.nn.functional as F

    from lmforge.tuners import longlora

    torch.manual_seed(0)
    b, h, t, d = 2, 4, 16, 8
    q, k, v = (torch.randn(b, h, t, d) for _ in range(3))

    class Attn(torch.nn.Module):
        pass

    module = Attn().train()
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    longlora._RATIO['value'] = 1.0
    out, _ = longlora.s2_attention_forward(module, q, k, v, None)
    assert torch.allclose(out[:, :, :h // 2], ref[:, :, :h // 2], atol=1e-5)  # unshifted heads: one full group
    longlora._RATIO['value'] = 0.25
    out, _ = longlora.s2_attention_forward(module, q, k, v, None)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 5
    v2[:, :, -1] += 5
    out2, _ = longlora.s2_attention_forward(module, q, k2, v2, None)
    assert torch.allclose(out[:, :-1], out2[:, :-1], atol=1e-6)  # causal, also across the wrapped group
    # the first group's unshifted heads see only their group: equal to causal attention on those 4 tokens
    first = F.scaled_dot_product_attention(q[:, :2, :4], k[:, :2, :4], v[:, :2, :4], is_causal=True)
    assert torch.allclose(out[:, :4, :2], first.transpose(1, 2), atol=1e-5)
    module.eval()  # inference: plain attention
    out_eval, _ = longlora.s2_attention_forward(module, q, k, v, None, is_causal=True)
    assert torch.allclose(out_eval, ref, atol=1e-5)


def test_longlora_refuses_an_architecture_outside_the_attention_interface():
    import torch

    from lmforge.errors import ArgumentError
    from lmforge.tuners.longlora import enable_shifted_sparse_attention

    class Custom(torch.nn.Module):
        config = None

    with pytest.raises(ArgumentError, match='longlora needs an architecture'):
        enable_shifted_sparse_attention(Custom())


def test_adalora_orthogonality_penalty_is_in_the_loss_and_keeps_vectors_orthogonal(tmp_path, qwen2_trained_dir,
                                                                                   facts_file):
    """peft adds AdaLoRA's penalty only to a loss the model computes; lmforge's trainer computes the loss itself, so
    it adds the penalty: the first step's loss is the cross-entropy + weight x the penalty of the initial adapters,
    and training with it ends closer to orthogonal singular vectors than training without."""
    import torch
    from safetensors.torch import load_file

    from lmforge.tuners.features import AdaLoraPenalty

    kw = dict(adalora_init_r=8, adalora_target_r=4, adalora_tinit=2, adalora_tfinal=2, learning_rate=2e-2,
              max_steps=8)
    initial = AdaLoraPenalty.of(starting_point(qwen2_trained_dir, 'adalora', adalora_orth_reg_weight=1.0, **kw))
    with torch.no_grad():
        residual = float(initial())  # weight 1: the mean ||A A^T - I||_F over the adapter matrices
    runs = {w: train(qwen2_trained_dir, facts_file, tmp_path / f'w{w}', 'adalora', adalora_orth_reg_weight=w, **kw)
            for w in (0.0, 2.0)}
    first = {w: logged_losses(r)[0] for w, r in runs.items()}
    assert first[2.0] - first[0.0] == pytest.approx(2.0 * residual, rel=1e-3), (first, residual)

    def final_residual(result):
        weights = load_file(os.path.join(result['last_checkpoint'], 'adapter_model.safetensors'))
        norms = []
        for name, p in weights.items():
            if 'lora_A' in name or 'lora_B' in name:
                cov = p @ p.T if 'lora_A' in name else p.T @ p
                norms.append(float(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0]))))
        return sum(norms) / len(norms)

    assert final_residual(runs[2.0]) < 0.8 * final_residual(runs[0.0])
