"""GGUF: the K-quant encoders against the gguf package's decoders, and whole files read back with the package's
reader (tensor names, shapes, types, metadata, tokenizer) and loaded by transformers' own GGUF loader."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from lmforge.errors import ModelError


def _rel_rmse(a, b) -> float:
    return float(np.sqrt(((a - b) ** 2).mean()) / np.sqrt((b ** 2).mean()))


def test_k_quants_decode_with_the_gguf_package():
    from gguf import GGMLQuantizationType as T, quants

    from lmforge.export.gguf_quants import quantize_rows

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 512)) * 0.05).astype(np.float32)
    x[3] = 0.0  # an all-zero row
    x[5, :256] = -0.3  # a constant block
    q4, q6 = quantize_rows(x, 'q4_k'), quantize_rows(x, 'q6_k')
    assert q4.shape == (16, 2 * 144) and q6.shape == (16, 2 * 210)  # llama.cpp's block sizes
    y4, y6 = quants.dequantize(q4, T.Q4_K), quants.dequantize(q6, T.Q6_K)
    assert np.all(y4[3] == 0) and np.all(y6[3] == 0)
    assert np.allclose(y4[5, :256], -0.3, atol=2e-3) and np.allclose(y6[5, :256], -0.3, atol=2e-3)
    rows = [i for i in range(16) if i not in (3, 5)]
    e4, e6 = _rel_rmse(y4[rows], x[rows]), _rel_rmse(y6[rows], x[rows])
    e8 = _rel_rmse(quants.dequantize(quants.quantize(x, T.Q8_0), T.Q8_0)[rows], x[rows])
    e40 = _rel_rmse(quants.dequantize(quants.quantize(x, T.Q4_0), T.Q4_0)[rows], x[rows])
    # 4.5 and 6.6 bits per weight: between the package's Q4_0 and Q8_0, ordered as in llama.cpp
    assert e8 < e6 < e4 < e40 and e4 < 0.08 and e6 < 0.02


def test_k_quants_reproduce_values_on_their_grid():
    """Values that lie exactly on a Q4_K / Q6_K grid come back (up to fp16 scales): packing is bit-exact."""
    from gguf import GGMLQuantizationType as T, quants

    from lmforge.export.gguf_quants import quantize_rows

    rng = np.random.default_rng(1)
    levels = rng.integers(0, 16, size=(4, 256)).astype(np.float32)
    levels[:, ::32] = 0
    levels[:, 1::32] = 15  # every sub-block spans the full range
    x = 0.0625 * levels - 0.5
    assert np.allclose(quants.dequantize(quantize_rows(x, 'q4_k'), T.Q4_K), x, atol=1e-3)
    levels6 = rng.integers(-32, 32, size=(4, 256)).astype(np.float32)
    levels6[:, ::16] = -32
    x6 = 0.03125 * levels6
    assert np.allclose(quants.dequantize(quantize_rows(x6, 'q6_k'), T.Q6_K), x6, atol=1e-3)


def _field(reader, key):
    f = reader.fields[key]
    if len(f.data) == 1:
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0].name == 'STRING' else v.tolist()[0]
    return [bytes(f.parts[i]).decode() if f.types[-1].name == 'STRING' else f.parts[i].tolist()[0] for i in f.data]


EXPECTED_TYPES = {  # (tensor, gguf_type) -> type; 2 layers: llama.cpp's use_more_bits picks layer 1
    'f16': {'token_embd.weight': 'F16', 'blk.0.attn_q.weight': 'F16', 'blk.0.attn_norm.weight': 'F32'},
    'q8_0': {'token_embd.weight': 'Q8_0', 'blk.1.ffn_down.weight': 'Q8_0', 'output_norm.weight': 'F32'},
    'q4_k_m': {'blk.0.attn_q.weight': 'Q4_K', 'blk.0.attn_v.weight': 'Q4_K', 'blk.1.attn_v.weight': 'Q6_K',
               'blk.0.ffn_down.weight': 'Q4_K', 'blk.1.ffn_down.weight': 'Q6_K', 'blk.0.ffn_norm.weight': 'F32'},
}


@pytest.mark.parametrize('arch,gguf_type', [('qwen2', 'f16'), ('qwen2', 'q4_k_m'), ('llama', 'q8_0'),
                                            ('llama', 'q4_k_m')])
def test_gguf_round_trip(arch, gguf_type, request, tmp_path, tokenizer):
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmforge.export.to_gguf import write_gguf

    model_dir = request.getfixturevalue(f'wide_{arch}_dir')
    path = str(tmp_path / f'm-{gguf_type}.gguf')
    summary = write_gguf(model_dir, path, gguf_type)
    reader = GGUFReader(path)
    config = AutoConfig.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    # tensors: llama.cpp's names, HF's shapes (GGUF stores them innermost first), the types asked for
    tensors = {t.name: t for t in reader.tensors}
    hf_shapes = {n: tuple(p.shape) for n, p in hf.named_parameters()}
    expected = {'token_embd.weight': hf_shapes['model.embed_tokens.weight'], 'output_norm.weight': (256,)}
    for i in range(2):
        for short, hf_name in (('attn_q', 'self_attn.q_proj'), ('attn_k', 'self_attn.k_proj'),
                               ('attn_v', 'self_attn.v_proj'), ('attn_output', 'self_attn.o_proj'),
                               ('ffn_gate', 'mlp.gate_proj'), ('ffn_up', 'mlp.up_proj'),
                               ('ffn_down', 'mlp.down_proj')):
            expected[f'blk.{i}.{short}.weight'] = hf_shapes[f'model.layers.{i}.{hf_name}.weight']
        expected[f'blk.{i}.attn_norm.weight'] = expected[f'blk.{i}.ffn_norm.weight'] = (256,)
        if arch == 'qwen2':
            for b in ('q', 'k', 'v'):
                expected[f'blk.{i}.attn_{b}.bias'] = hf_shapes[f'model.layers.{i}.self_attn.{b}_proj.bias']
    if arch == 'llama':  # untied: its own output matrix
        expected['output.weight'] = hf_shapes['lm_head.weight']
    assert {n: tuple(int(d) for d in reversed(t.shape)) for n, t in tensors.items()} == expected
    for name, qtype in EXPECTED_TYPES[gguf_type].items():
        assert tensors[name].tensor_type.name == qtype, name
    if gguf_type == 'q4_k_m':  # the output matrix (or the tied embedding standing in for it) gets Q6_K
        assert tensors['output.weight' if arch == 'llama' else 'token_embd.weight'].tensor_type.name == 'Q6_K'

    # metadata
    gguf_arch = _field(reader, 'general.architecture')
    assert gguf_arch == ('qwen2' if arch == 'qwen2' else 'llama')
    assert _field(reader, f'{gguf_arch}.block_count') == 2
    assert _field(reader, f'{gguf_arch}.embedding_length') == 256
    assert _field(reader, f'{gguf_arch}.feed_forward_length') == 512
    assert _field(reader, f'{gguf_arch}.attention.head_count') == 4
    assert _field(reader, f'{gguf_arch}.attention.head_count_kv') == 2
    assert _field(reader, f'{gguf_arch}.context_length') == config.max_position_embeddings
    assert _field(reader, f'{gguf_arch}.rope.freq_base') == pytest.approx(config.rope_parameters['rope_theta'])
    assert _field(reader, f'{gguf_arch}.attention.layer_norm_rms_epsilon') == pytest.approx(config.rms_norm_eps)
    assert _field(reader, 'general.file_type') == {'f16': 1, 'q8_0': 7, 'q4_k_m': 15}[gguf_type]

    # tokenizer: the vocabulary by id, its kinds, merges, special ids, chat template
    tokens = _field(reader, 'tokenizer.ggml.tokens')
    vocab = tokenizer.get_vocab()
    assert len(tokens) == config.vocab_size and all(tokens[i] == t for t, i in vocab.items())
    types = _field(reader, 'tokenizer.ggml.token_type')
    assert types[vocab['<|im_end|>']] == 3 and types[vocab['a']] == 1  # CONTROL, NORMAL
    with open(os.path.join(model_dir, 'tokenizer.json'), encoding='utf-8') as f:
        merges = json.load(f)['model']['merges']
    assert _field(reader, 'tokenizer.ggml.merges') == [m if isinstance(m, str) else ' '.join(m) for m in merges]
    assert _field(reader, 'tokenizer.ggml.model') == 'gpt2'
    assert _field(reader, 'tokenizer.ggml.eos_token_id') == tokenizer.eos_token_id
    assert _field(reader, 'tokenizer.ggml.padding_token_id') == tokenizer.pad_token_id
    assert _field(reader, 'tokenizer.chat_template') == tokenizer.chat_template
    assert summary['n_tensors'] == len(expected)

    # transformers' own GGUF loader (dequantizes; undoes llama's q/k permutation) computes what the model did
    loaded = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                  dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template([{'role': 'user', 'content': 'Last letter: abcde'}], add_generation_prompt=True,
                                        return_tensors='pt', return_dict=True)['input_ids']
    with torch.inference_mode():
        ref, got = hf(input_ids=ids).logits, loaded(input_ids=ids).logits
    scale = float(ref.abs().max())
    bound = {'f16': 2e-3, 'q8_0': 3e-2, 'q4_k_m': 0.25}[gguf_type] * scale
    assert float((ref - got).abs().max()) < bound


def test_unsupported_architecture_is_a_clear_error(tmp_path, tokenizer):
    from lmforge.demo.build import build_model, save_model_dir
    from lmforge.export.to_gguf import write_gguf

    d = save_model_dir(str(tmp_path / 'phi3'), build_model(tokenizer, 'phi3', hidden_size=64, num_layers=1,
                                                          num_heads=4, num_kv_heads=4), tokenizer)
    with pytest.raises(ModelError, match='convert_hf_to_gguf'):
        write_gguf(d, str(tmp_path / 'x.gguf'))


def test_pre_tokenizer_names():
    """tokenizer.ggml.pre tells llama.cpp how to split text before BPE: known regexes get llama.cpp's names."""
    from lmforge.demo.build import QWEN2_SPLIT
    from lmforge.export.to_gguf import pre_tokenizer_name

    def seq(pattern):
        return {'pre_tokenizer': {'type': 'Sequence', 'pretokenizers': [
            {'type': 'Split', 'pattern': {'Regex': pattern}, 'behavior': 'Isolated'},
            {'type': 'ByteLevel', 'add_prefix_space': False, 'use_regex': False}]}}

    assert pre_tokenizer_name(seq(QWEN2_SPLIT)) == 'qwen2'
    assert pre_tokenizer_name(seq(QWEN2_SPLIT.replace(r'\p{N}|', r'\p{N}{1,3}|'))) == 'llama-bpe'
    assert pre_tokenizer_name({'pre_tokenizer': {'type': 'ByteLevel', 'use_regex': True}}) == 'gpt-2'
    assert pre_tokenizer_name(seq(r'\p{L}+|\s+')) is None  # written as "default", with a warning
