# From ../shared/bench/gpu/hf_baseline.py (the GPU benchmark recipe shared with lmforge); lmforge added
# LABEL_SUFFIX (as run_swift.sh has), to tell the run on lmforge's stack apart.
"""Baseline: plain transformers Trainer + PEFT LoRA SFT on the chat rows from make_model_and_data.py.

    python hf_baseline.py --model /tmp/bench/model --data /tmp/bench/data.jsonl --gc 0
    python hf_baseline.py --model /tmp/bench/model --data /tmp/bench/data.jsonl --gc 1

Rows are rendered with the tokenizer's own chat template; the loss covers the assistant turn only
(prompt tokens labelled -100). Batches are padded to their longest row (right padding). The
measurement (tokens/s, peak memory) comes from bench_callback.ThroughputCallback.
"""
import argparse
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments,
                          set_seed)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_callback import ThroughputCallback  # noqa: E402

LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']  # = 'all-linear'


def encode(tok, messages, max_len):
    text = tok.apply_chat_template(messages, tokenize=False)
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)['input_ids'][:max_len]
    n_prompt = len(tok(prompt, add_special_tokens=False)['input_ids'])
    return {'input_ids': ids, 'attention_mask': [1] * len(ids), 'labels': [-100] * n_prompt + ids[n_prompt:]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', required=True)
    p.add_argument('--data', required=True)
    p.add_argument('--gc', type=int, default=0, help='gradient checkpointing (non-reentrant)')
    p.add_argument('--bs', type=int, default=8, help='per-device batch size')
    p.add_argument('--max_len', type=int, default=1024)
    p.add_argument('--steps', type=int, default=35, help='optimizer steps in all, warmup included')
    p.add_argument('--warmup', type=int, default=5, help='first steps left out of the timing')
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--workers', type=int, default=2, help='dataloader workers')
    p.add_argument('--attn', default='sdpa')
    p.add_argument('--out_dir', default='/tmp/hf_baseline_out')
    p.add_argument('--cpu', action='store_true', help='CPU smoke test (fp32)')
    a = p.parse_args()
    set_seed(42)

    tok = AutoTokenizer.from_pretrained(a.model)
    with open(a.data) as f:
        rows = [encode(tok, json.loads(line)['messages'], a.max_len) for line in f]

    dtype = torch.float32 if a.cpu else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation=a.attn)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS,
                                             bias='none', task_type='CAUSAL_LM'))
    n_trainable, n_all = model.get_nb_trainable_parameters()

    args = TrainingArguments(
        output_dir=a.out_dir, per_device_train_batch_size=a.bs, gradient_accumulation_steps=1, max_steps=a.steps,
        learning_rate=a.lr, lr_scheduler_type='cosine', warmup_steps=0, weight_decay=0.1, bf16=not a.cpu,
        gradient_checkpointing=bool(a.gc), gradient_checkpointing_kwargs={'use_reentrant': False} if a.gc else None,
        logging_steps=5, save_strategy='no', eval_strategy='no', report_to='none', seed=42,
        dataloader_num_workers=a.workers, remove_unused_columns=False, use_cpu=a.cpu)
    label = f'hf_trainer+peft gc={"on" if a.gc else "off"} bs={a.bs}' + os.environ.get('LABEL_SUFFIX', '')
    cb = ThroughputCallback(label, warmup=a.warmup, extra={
        'framework': 'hf', 'gc': bool(a.gc), 'bs': a.bs, 'attn': a.attn, 'trainable_params': n_trainable,
        'optim': args.optim if isinstance(args.optim, str) else args.optim.value})
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[cb],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer.train()


if __name__ == '__main__':
    main()
