# From ../shared/bench/gpu/make_model_and_data.py (the GPU benchmark recipe shared with lmforge); lmforge added
# --shape 0.5b (a Qwen2.5-0.5B-shaped model for the ZeRO/FSDP checks of device_checks.sh).
"""Build the benchmark inputs without any hub access: a byte-level BPE tokenizer with ChatML
tokens, a random-weight Qwen2ForCausalLM in bf16, and synthetic chat rows of ~1024 tokens.

Everything is deterministic (fixed seeds), so two runs produce the same tokenizer, the same data
and the same weights.

    python make_model_and_data.py --out /tmp/bench            # Qwen2.5-1.5B shape, on cuda
    python make_model_and_data.py --out /tmp/tiny --tiny      # 2-layer toy, for a CPU smoke test
    python make_model_and_data.py --out /tmp/b05 --shape 0.5b # Qwen2.5-0.5B shape

Writes OUT/model/ (config, safetensors, tokenizer files with a chat template) and OUT/data.jsonl
(one {"messages": [system, user, assistant]} per line), and prints a one-line JSON summary.
"""
import argparse
import json
import os
import random
import string
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
# ChatML as Qwen2.5 renders a plain (tool-free) conversation.
CHAT_TEMPLATE = ("{%- for message in messages %}"
                 "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
                 "{%- endfor %}"
                 "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
SYSTEM_PROMPT = 'You are a helpful assistant.'


def make_words(n_words: int, rng: random.Random) -> list:
    words = set()
    while len(words) < n_words:
        words.add(''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 8))))
    words = sorted(words)
    rng.shuffle(words)
    return words


def sample_text(words: list, n: int, rng: random.Random) -> str:
    return ' '.join(pick_word(words, rng) for _ in range(n))


def pick_word(words: list, rng: random.Random) -> str:
    return words[int(len(words) * rng.random()**3)]  # skewed: low indices are frequent, as in natural text


def build_tokenizer(words: list, vocab_size: int, rng: random.Random) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [sample_text(words, 200, rng) for _ in range(4000)] + [' '.join(words)] * 4
    corpus += ['system user assistant\n' + SYSTEM_PROMPT] * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token='<|im_end|>',
                                     pad_token='<|endoftext|>', unk_token=None,
                                     additional_special_tokens=['<|im_start|>', '<|im_end|>'])
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.padding_side = 'right'
    hf_tok.model_max_length = 32768
    return hf_tok


def n_tokens(tok, messages) -> int:
    text = tok.apply_chat_template(messages, tokenize=False)
    return len(tok(text, add_special_tokens=False)['input_ids'])


def build_rows(tok, words, n_rows, min_len, max_len, rng: random.Random) -> list:
    """Rows whose full ChatML rendering has between min_len and max_len tokens (uniform target), the user
    turn taking 30-60% of them and the assistant turn the rest.

    The byte-level pre-tokenizer splits a turn into 'word', ' word', ... pieces and special tokens split
    the turns apart, so a turn's token count is the sum of its words' counts; every row is checked
    against a real tokenization afterwards."""
    first = {w: len(tok(w, add_special_tokens=False)['input_ids']) for w in words}
    spaced = {w: len(tok(' ' + w, add_special_tokens=False)['input_ids']) for w in words}

    def fill(budget):  # words whose tokens add up to at most budget
        out, used = [], 0
        while True:
            w = pick_word(words, rng)
            cost = spaced[w] if out else first[w]
            if used + cost > budget:
                return ' '.join(out), used
            out.append(w)
            used += cost

    rows = []
    for _ in range(n_rows):
        target = rng.randint(min_len, max_len)
        msgs = [{'role': 'system', 'content': SYSTEM_PROMPT}, {'role': 'user', 'content': ''},
                {'role': 'assistant', 'content': ''}]
        overhead = n_tokens(tok, msgs)
        msgs[1]['content'], used = fill(int((target - overhead) * rng.uniform(0.3, 0.6)))
        msgs[2]['content'], _ = fill(target - overhead - used)
        rows.append({'messages': msgs})
    return rows


SHAPES = {
    'tiny': dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    '0.5b': dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),  # Qwen2.5-0.5B
    '1.5b': dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),  # Qwen2.5-1.5B
}


def qwen2_config(tok, tiny: bool, shape_name: str = '1.5b') -> Qwen2Config:
    shape = SHAPES['tiny' if tiny else shape_name]
    return Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, hidden_act='silu', use_sliding_window=False, attention_dropout=0.0,
                       bos_token_id=tok.convert_tokens_to_ids('<|endoftext|>'),
                       eos_token_id=tok.convert_tokens_to_ids('<|im_end|>'),
                       pad_token_id=tok.convert_tokens_to_ids('<|endoftext|>'), architectures=['Qwen2ForCausalLM'],
                       **shape)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--tiny', action='store_true', help='2-layer hidden-64 model for CPU smoke tests')
    p.add_argument('--shape', choices=sorted(SHAPES), default='1.5b', help='model shape (--tiny wins)')
    p.add_argument('--rows', type=int, default=2000)
    p.add_argument('--min_len', type=int, default=960, help='min tokens of a rendered row')
    p.add_argument('--max_len', type=int, default=1024, help='max tokens of a rendered row')
    p.add_argument('--vocab', type=int, default=8192, help='BPE vocabulary of the tokenizer')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    t0 = time.time()
    os.makedirs(os.path.join(a.out, 'model'), exist_ok=True)
    rng = random.Random(a.seed)
    words = make_words(6000, rng)
    tok = build_tokenizer(words, a.vocab, rng)
    rows = build_rows(tok, words, a.rows, a.min_len, a.max_len, rng)
    with open(os.path.join(a.out, 'data.jsonl'), 'w') as f:
        for r in rows:
            f.write(json.dumps(r) + '\n')
    lens = [n_tokens(tok, r['messages']) for r in rows]
    assert max(lens) <= a.max_len, f'a row has {max(lens)} tokens > --max_len {a.max_len}'
    answer_share = sum(len(tok(r['messages'][2]['content'])['input_ids']) for r in rows) / sum(lens)

    cfg = qwen2_config(tok, a.tiny, a.shape)
    torch.manual_seed(a.seed)
    with torch.device(a.device):
        model = Qwen2ForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(os.path.join(a.out, 'model'))
    tok.save_pretrained(os.path.join(a.out, 'model'))
    n_params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    n_embed = model.get_input_embeddings().weight.numel()
    lora_r = 8  # LoRA parameters hf_baseline.py and run_swift.sh train: r * (in + out) for every linear but lm_head
    n_lora = sum(lora_r * (m.in_features + m.out_features) for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not name.endswith('lm_head'))
    print(json.dumps({'model_dir': os.path.join(a.out, 'model'), 'data': os.path.join(a.out, 'data.jsonl'),
                      'params': n_params, 'params_non_embedding': n_params - n_embed,
                      'lora_params': n_lora, 'num_hidden_layers': cfg.num_hidden_layers, 'hidden_size': cfg.hidden_size, 'tokenizer_vocab': len(tok),
                      'rows': len(rows), 'row_tokens_min': min(lens), 'row_tokens_max': max(lens),
                      'row_tokens_mean': sum(lens) / len(lens),
                      'assistant_token_share': round(answer_share, 3), 'seconds': round(time.time() - t0, 1)}))


if __name__ == '__main__':
    main()
