"""A transformers model directory -> one GGUF file (llama.cpp, Ollama, LM Studio), with the `gguf` package.

The package writes the file (GGUFWriter), names the tensors (TensorNameMap), reads the special tokens, merges and
chat template (SpecialVocab) and quantizes F16/BF16/Q8_0/Q5_0; what it lacks is done here the way llama.cpp's
convert_hf_to_gguf.py does it: the architecture's metadata keys, the vocabulary (padded to the embedding rows),
the pre-tokenizer name, Llama's q/k row permutation, Llama-3's rope_freqs, and Q4_K/Q6_K quantization
(`gguf_quants`) with llama.cpp's Q4_K_M choice of types per tensor.

Architectures: Llama (and Mistral, same graph), Qwen2, Qwen3. Tokenizers: byte-level BPE (GPT-2 style: Qwen,
Llama-3, Mistral-Nemo, ...).
"""
from __future__ import annotations

import json
import math
import os
import re

from lmforge.errors import ModelError

# transformers class -> (gguf arch, permute q/k rows for llama.cpp's interleaved RoPE)
ARCHITECTURES = {
    'LlamaForCausalLM': ('LLAMA', True),
    'MistralForCausalLM': ('LLAMA', True),
    'Qwen2ForCausalLM': ('QWEN2', False),
    'Qwen3ForCausalLM': ('QWEN3', False),
}
# gguf_type -> (llama.cpp file type name, default tensor type name)
GGUF_TYPES = {'f32': ('ALL_F32', 'F32'), 'f16': ('MOSTLY_F16', 'F16'), 'bf16': ('MOSTLY_BF16', 'BF16'),
              'q8_0': ('MOSTLY_Q8_0', 'Q8_0'), 'q4_k_m': ('MOSTLY_Q4_K_M', 'Q4_K')}
# Split regexes of known pre-tokenizers -> llama.cpp's name for them (tokenizer.ggml.pre)
PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        'qwen2',
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+": 'llama-bpe',
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}"
    r"\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        'tekken',
}


def log(msg: str) -> None:
    print(f'[lmforge export] {msg}', flush=True)


def _config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, 'config.json'), encoding='utf-8') as f:
        config = json.load(f)
    return config.get('text_config', config) if 'text_config' in config and 'hidden_size' not in config else config


def _rope(config: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope scaling dict or None) from a transformers 4 (rope_theta/rope_scaling) or 5
    (rope_parameters) config."""
    params = config.get('rope_parameters') or {}
    theta = params.get('rope_theta', config.get('rope_theta', 10000.0))
    scaling = config.get('rope_scaling') or params
    kind = (scaling or {}).get('rope_type', (scaling or {}).get('type', 'default'))
    return float(theta), (None if kind in (None, 'default') else {**scaling, 'rope_type': kind})


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v/ffn_down get Q6_K in Q4_K_M."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_type(gguf_name: str, shape: tuple, gguf_type: str, n_layers: int, has_output: bool):
    """The GGML type of one tensor: 1-D ones stay F32; Q4_K_M follows llama.cpp's llama_tensor_get_type."""
    from gguf import GGMLQuantizationType as T

    if len(shape) == 1 or gguf_name.endswith('_norm.weight') or gguf_name == 'rope_freqs.weight':
        return T.F32
    base = getattr(T, GGUF_TYPES[gguf_type][1])
    if gguf_type == 'q4_k_m':
        layer = re.match(r'blk\.(\d+)\.', gguf_name)
        if gguf_name == 'output.weight' or (not has_output and gguf_name == 'token_embd.weight'):
            base = T.Q6_K
        elif layer and (gguf_name.endswith('attn_v.weight') or gguf_name.endswith('ffn_down.weight')) \
                and use_more_bits(int(layer.group(1)), n_layers):
            base = T.Q6_K
    return fallback_type(base, shape[-1])


def fallback_type(qtype, n_cols: int):
    """A type whose block fits the row length (llama.cpp's fallbacks: K-quants need 256, the others 32)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

    block = GGML_QUANT_SIZES[qtype][0]
    if n_cols % block == 0:
        return qtype
    fallback = {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}.get(qtype)
    if fallback is not None and n_cols % GGML_QUANT_SIZES[fallback][0] == 0:
        return fallback
    return T.F16


def encode_tensor(data, qtype):
    """float32 numpy -> what GGUFWriter.add_tensor takes for ``qtype`` (array, raw_dtype)."""
    import numpy as np
    from gguf import GGMLQuantizationType as T, quants

    if qtype == T.F32:
        return data.astype(np.float32), None
    if qtype == T.F16:
        return data.astype(np.float16), None
    if qtype in (T.Q4_K, T.Q6_K):
        from lmforge.export.gguf_quants import quantize_rows
        flat = data.reshape(-1, data.shape[-1])
        packed = quantize_rows(flat, 'q4_k' if qtype == T.Q4_K else 'q6_k')
        return packed.reshape(*data.shape[:-1], packed.shape[-1]), qtype
    return quants.quantize(data.astype(np.float32), qtype), qtype


def permute_qk(w, n_head: int, n_head_kv: int | None = None):
    """HF's rotate-half q/k rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py's LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(config: dict, scaling: dict, theta: float):
    """The rope_freqs tensor llama.cpp needs for rope_type llama3 (Llama 3.1+)."""
    import numpy as np

    dim = config.get('head_dim') or config['hidden_size'] // config['num_attention_heads']
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = scaling.get('factor', 8.0)
    low, high = scaling.get('low_freq_factor', 1.0), scaling.get('high_freq_factor', 4.0)
    old_ctx = scaling.get('original_max_position_embeddings', 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def pre_tokenizer_name(tokenizer_json: dict) -> str | None:
    """llama.cpp's name of the pre-tokenizer (how text is split before BPE), when it is a known one."""
    pre = tokenizer_json.get('pre_tokenizer') or {}
    items = pre.get('pretokenizers', [pre]) if pre.get('type') == 'Sequence' else [pre]
    for item in items:
        if item.get('type') == 'Split':
            pattern = (item.get('pattern') or {}).get('Regex')
            return PRE_TOKENIZERS.get(pattern)
        if item.get('type') == 'ByteLevel' and item.get('use_regex', True):
            return 'gpt-2'
    return None


def vocab_of(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token texts and types by id, padded to the embedding's rows (llama.cpp's get_vocab_base)."""
    from gguf import TokenType

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    if reverse and max(reverse) >= vocab_size:
        raise ModelError(f'the tokenizer has token id {max(reverse)} but the model only {vocab_size} embedding rows')
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f'[PAD{i}]')
            types.append(TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            info = decoder.get(i)
            if info is not None and not info.normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            special = info is not None and info.special
            looks_special = token.startswith(('<|', '<｜')) and token.endswith(('|>', '｜>'))
            types.append(TokenType.CONTROL if special or looks_special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def gguf_file_name(model_dir: str, gguf_type: str) -> str:
    name = re.sub(r'[^A-Za-z0-9._-]+', '-', os.path.basename(os.path.normpath(model_dir))).strip('-') or 'model'
    return f'{name}-{gguf_type}.gguf'


def write_gguf(model_dir: str, out_path: str, gguf_type: str = 'f16', tokenizer=None, name: str | None = None) -> dict:
    """Convert ``model_dir`` (safetensors) to ``out_path``; ``tokenizer`` (with the chat template to embed) defaults
    to the directory's own. Returns a summary: tensors, types, metadata."""
    import gguf
    from safetensors import SafetensorError, safe_open

    config = _config(model_dir)
    archs = config.get('architectures') or []
    arch_cls = next((a for a in archs if a in ARCHITECTURES), None)
    if arch_cls is None:
        raise ModelError(f'--to_gguf: {model_dir} is a {"/".join(archs) or "model of unknown architecture"}; the GGUF '
                         f'converter knows {", ".join(sorted(ARCHITECTURES))} (for others use llama.cpp\'s '
                         'convert_hf_to_gguf.py on the merged model)')
    if gguf_type not in GGUF_TYPES:
        raise ModelError(f'--gguf_type: unknown type {gguf_type!r}; choose {", ".join(GGUF_TYPES)}')
    arch_name, permute = ARCHITECTURES[arch_cls]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    if tokenizer is None:
        from lmforge.models import load_tokenizer
        tokenizer = load_tokenizer(model_dir)
    tok_json_path = os.path.join(model_dir, 'tokenizer.json')
    if not os.path.isfile(tok_json_path):
        raise ModelError(f'--to_gguf: {model_dir} has no tokenizer.json (a fast tokenizer is needed)')
    with open(tok_json_path, encoding='utf-8') as f:
        tok_json = json.load(f)
    model = tok_json.get('model', {})
    if model.get('type') != 'BPE' or model.get('byte_fallback') or (tok_json.get('decoder') or {}).get('type') != \
            'ByteLevel':
        raise ModelError('--to_gguf: only byte-level BPE tokenizers (Qwen, Llama-3, GPT-2 style) are converted here; '
                         "this model's is not: use llama.cpp's convert_hf_to_gguf.py on the merged model")

    n_layers = config['num_hidden_layers']
    n_head = config['num_attention_heads']
    n_kv = config.get('num_key_value_heads', n_head)
    hidden = config['hidden_size']
    head_dim = config.get('head_dim') or hidden // n_head
    vocab_size = config.get('vocab_size', len(tokenizer))
    tied = bool(config.get('tie_word_embeddings', False))
    theta, scaling = _rope(config)

    names = gguf.get_tensor_name_map(arch, n_layers)
    tmp = out_path + '.tmp'
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch], use_temp_file=True)
    writer.add_name(name or os.path.basename(os.path.normpath(model_dir)))
    writer.add_context_length(config.get('max_position_embeddings', 4096))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config['intermediate_size'])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config.get('rms_norm_eps', 1e-6))
    if config.get('head_dim') and config['head_dim'] != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch_name == 'LLAMA':
        writer.add_vocab_size(vocab_size)
        writer.add_rope_dimension_count(head_dim)
    extra = {}
    if scaling:
        kind = scaling['rope_type']
        if kind == 'linear':
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(scaling['factor'])
        elif kind == 'yarn':
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(scaling['factor'])
            writer.add_rope_scaling_orig_ctx_len(scaling.get('original_max_position_embeddings', 32768))
        elif kind == 'llama3' and arch_name == 'LLAMA':
            extra['rope_freqs.weight'] = llama3_rope_factors(config, scaling, theta)
        else:
            raise ModelError(f'--to_gguf: rope scaling {kind!r} is not converted here; use llama.cpp\'s '
                             'convert_hf_to_gguf.py')
    file_type = getattr(gguf.LlamaFileType, GGUF_TYPES[gguf_type][0])
    writer.add_file_type(int(file_type))
    if gguf_type not in ('f32', 'f16', 'bf16'):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # tokenizer: vocabulary, pre-tokenizer, merges, special ids, add_bos/eos, chat template
    tokens, types = vocab_of(tokenizer, vocab_size)
    pre = pre_tokenizer_name(tok_json)
    if pre is None:
        log('warning: the pre-tokenizer is not one llama.cpp knows by name; written as "default" (llama.cpp may split '
            'text before BPE differently from transformers)')
    writer.add_tokenizer_model('gpt2')
    writer.add_tokenizer_pre(pre or 'default')
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if tokenizer.chat_template:  # the template lmforge uses (a --template override included)
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)

    files = sorted(f for f in os.listdir(model_dir) if f.endswith('.safetensors'))
    if not files:
        raise ModelError(f'--to_gguf: {model_dir} holds no .safetensors weights')
    summary = {}
    has_output = not tied
    for fname in files:
        try:
            handle = safe_open(os.path.join(model_dir, fname), framework='pt')
        except SafetensorError as e:
            raise ModelError(f'--to_gguf: {os.path.join(model_dir, fname)} is not a readable safetensors file (corrupt '
                             f'or incomplete: {e})') from None
        with handle as f:
            for key in f.keys():
                if key == 'lm_head.weight' and tied:
                    continue
                if key.endswith(('rotary_emb.inv_freq', '.masked_bias', '.attn.bias')):
                    continue
                target = names.get_name(key, try_suffixes=('.weight', '.bias'))
                if target is None:
                    raise ModelError(f'--to_gguf: no GGUF name for the tensor {key!r} of {arch_cls}')
                data = f.get_tensor(key).float().numpy()
                if permute and key.endswith('q_proj.weight'):
                    data = permute_qk(data, n_head, n_head)
                elif permute and key.endswith('k_proj.weight'):
                    data = permute_qk(data, n_head, n_kv)
                qtype = tensor_type(target, data.shape, gguf_type, n_layers, has_output)
                array, raw = encode_tensor(data, qtype)
                writer.add_tensor(target, array, raw_dtype=raw)
                summary[target] = (tuple(data.shape), qtype.name)
    for target, data in extra.items():
        writer.add_tensor(target, data)
        summary[target] = (tuple(data.shape), 'F32')
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    os.replace(tmp, out_path)
    check = verify_gguf(out_path, summary, len(tokens))
    counts = {}
    for _, t in summary.values():
        counts[t] = counts.get(t, 0) + 1
    log(f'GGUF {out_path}: {len(summary)} tensors ({", ".join(f"{n} {t}" for t, n in sorted(counts.items()))}), '
        f'{len(tokens)} tokens, pre-tokenizer {pre or "default"}, {os.path.getsize(out_path) / 2**20:.1f} MiB; '
        'read back: ok')
    return {'path': out_path, 'arch': gguf.MODEL_ARCH_NAMES[arch], 'gguf_type': gguf_type, 'tensors': summary,
            'n_tokens': len(tokens), 'pre_tokenizer': pre or 'default', **check}


def verify_gguf(path: str, expected: dict, n_tokens: int) -> dict:
    """Read the file back with the package's reader: every tensor there with its shape and type, the vocabulary."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    found = {t.name: (tuple(int(d) for d in reversed(t.shape)), t.tensor_type.name) for t in reader.tensors}
    if found != expected:
        missing = sorted(set(expected) - set(found))
        wrong = sorted(k for k in expected if k in found and found[k] != expected[k])
        raise ModelError(f'--to_gguf: the written file does not read back as written (missing {missing[:5]}, '
                         f'different {wrong[:5]})')
    tokens = reader.fields['tokenizer.ggml.tokens']
    if len(tokens.data) != n_tokens:
        raise ModelError(f'--to_gguf: {len(tokens.data)} tokens read back, {n_tokens} written')
    return {'n_tensors': len(found)}
