#!/usr/bin/env bash
# From ../shared/bench/gpu/run_swift.sh (the GPU benchmark recipe shared with lmforge); lmforge added $PYTHON
# (default python3) so that a CPU smoke test can run it with the ms-swift venv's interpreter.
# ms-swift LoRA SFT with the same model, data and hyper-parameters as hf_baseline.py.
#   bash run_swift.sh MODEL_DIR DATA_JSONL GC(0|1) [extra swift sft args...]
# Equivalent plain CLI: `swift sft <the same arguments>` (swift_sft_timed.py only adds the timing callback).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=$1 data=$2 gc=$3; shift 3
[ "$gc" = 1 ] && gcflag=true || gcflag=false
label="ms-swift gc=$([ "$gc" = 1 ] && echo on || echo off) bs=${BS:-8}${LABEL_SUFFIX:-}"
exec "${PYTHON:-python3}" "$here/swift_sft_timed.py" "$label" \
  --model "$model" --model_type qwen2 --template qwen2_5 --use_hf true --check_model false \
  --dataset "$data" --split_dataset_ratio 0 --dataset_num_proc 4 \
  --tuner_type lora --lora_rank 8 --lora_alpha 32 --lora_dropout 0.05 --target_modules all-linear \
  --torch_dtype bfloat16 --attn_impl "${ATTN:-sdpa}" --max_length 1024 \
  --per_device_train_batch_size "${BS:-8}" --gradient_accumulation_steps 1 \
  --learning_rate 1e-4 --lr_scheduler_type cosine --warmup_ratio 0 --weight_decay 0.1 \
  --max_steps "${STEPS:-35}" --gradient_checkpointing "$gcflag" \
  --logging_steps 5 --save_strategy no --eval_strategy no --report_to none \
  --dataloader_num_workers 2 --seed 42 --output_dir "${OUT_DIR:-/tmp/swift_out}" "$@"
