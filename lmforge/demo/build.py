"""Build small real-architecture models and byte-level BPE tokenizers locally, without any hub.

Used by `lmforge demo` (the embedded default model) and by the tests (tiny Qwen2/Llama/Mistral/... models).
"""
from __future__ import annotations

import os

# Qwen2's pre-tokenizer split: contractions, letter runs, single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML_SPECIAL = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
# Qwen2.5's template without tools, no default system prompt: the demo model's own chat template.
DEMO_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tokenizer(corpus: list[str], special_tokens: list[str], vocab_size: int = 1000,
                    chat_template: str | None = None, eos_token: str | None = None, bos_token: str | None = None,
                    pad_token: str | None = None, unk_token: str | None = None, split_letters: bool = False):
    """A byte-level BPE trained on ``corpus`` with ``special_tokens`` as single tokens (a real fast tokenizer:
    offsets, decode, save/load all behave as for a hub model). ``split_letters`` keeps spaces out of words, so with
    a small ``vocab_size`` the merges go to frequent (template) words and rare words stay letter by letter: what
    letter-level tasks need."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pattern = r"\p{L}+|\p{N}|[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+" if split_letters else QWEN2_SPLIT
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior='isolated'),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys(t for t in [*special_tokens, eos_token, bos_token, pad_token, unk_token] if t))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, bos_token=bos_token,
                                   pad_token=pad_token or eos_token, unk_token=unk_token,
                                   additional_special_tokens=[t for t in special_tokens
                                                              if t not in (eos_token, bos_token, pad_token)])
    fast.chat_template = chat_template
    return fast


ARCHITECTURES = {
    # name: (config class, model class) in transformers; all decoder-only causal LMs.
    'qwen2': ('Qwen2Config', 'Qwen2ForCausalLM'),
    'llama': ('LlamaConfig', 'LlamaForCausalLM'),
    'mistral': ('MistralConfig', 'MistralForCausalLM'),
    'gemma': ('GemmaConfig', 'GemmaForCausalLM'),
    'phi3': ('Phi3Config', 'Phi3ForCausalLM'),
}


def build_model(tokenizer, arch: str = 'qwen2', hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                num_kv_heads: int = 2, intermediate_size: int = 128, max_position_embeddings: int = 2048,
                seed: int = 0, tie_word_embeddings: bool = True):
    """A randomly initialised model of a real architecture sized for ``tokenizer``."""
    import torch
    import transformers

    config_cls, model_cls = (getattr(transformers, n) for n in ARCHITECTURES[arch])
    config = config_cls(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                        tie_word_embeddings=tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == 'gemma':
        config.head_dim = hidden_size // num_heads
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model


def save_model_dir(path: str, model, tokenizer) -> str:
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
