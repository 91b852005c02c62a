"""Checkpoints for the export tests: a LoRA made by `lmforge.sft`, a DoRA and an rsLoRA made with PEFT directly (no
flag for them yet), a prompt-tuning adapter (which cannot merge), and 256-wide models for the K-quants."""
from __future__ import annotations

import pytest

from tests.conftest import fact_rows, write_jsonl


@pytest.fixture(scope='session')
def lora_ckpt(tmp_path_factory, qwen2_dir):
    from lmforge import sft

    tmp = tmp_path_factory.mktemp('export-lora')
    data = write_jsonl(tmp / 'facts.jsonl', fact_rows(48))
    out = sft(model=qwen2_dir, dataset=[data], tuner_type='lora', max_steps=6, learning_rate=2e-2,
              per_device_train_batch_size=8, gradient_checkpointing=False, report_to=['none'], save_steps=1000,
              output_dir=str(tmp / 'out'), logging_steps=100, lora_rank=4)
    return out['last_checkpoint']


def peft_adapter(base_dir: str, out_dir: str, **lora_kwargs) -> str:
    """An adapter with random (non-zero) B matrices, saved as PEFT does; its config names the base directory."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules='all-linear', init_lora_weights=False, **lora_kwargs)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope='session')
def dora_ckpt(tmp_path_factory, llama_dir):
    return peft_adapter(llama_dir, str(tmp_path_factory.mktemp('export-dora') / 'adapter'), use_dora=True)


@pytest.fixture(scope='session')
def rslora_ckpt(tmp_path_factory, qwen2_dir):
    return peft_adapter(qwen2_dir, str(tmp_path_factory.mktemp('export-rslora') / 'adapter'), use_rslora=True)


@pytest.fixture(scope='session')
def prompt_tuning_ckpt(tmp_path_factory, qwen2_dir):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = str(tmp_path_factory.mktemp('export-prompt') / 'adapter')
    model = AutoModelForCausalLM.from_pretrained(qwen2_dir)
    get_peft_model(model, PromptTuningConfig(task_type='CAUSAL_LM', num_virtual_tokens=4)).save_pretrained(out)
    return out


def wide_model(factory, tokenizer, arch: str, tied: bool) -> str:
    """256 wide: the K-quants' blocks are 256 values, so Q4_K_M really uses Q4_K/Q6_K here."""
    from lmforge.demo.build import build_model, save_model_dir

    model = build_model(tokenizer, arch, hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=512, tie_word_embeddings=tied)
    return save_model_dir(str(factory.mktemp(f'wide-{arch}')), model, tokenizer)


@pytest.fixture(scope='session')
def wide_qwen2_dir(tmp_path_factory, tokenizer):
    return wide_model(tmp_path_factory, tokenizer, 'qwen2', tied=True)


@pytest.fixture(scope='session')
def wide_llama_dir(tmp_path_factory, tokenizer):
    return wide_model(tmp_path_factory, tokenizer, 'llama', tied=False)
