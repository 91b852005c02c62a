#!/usr/bin/env bash
# The GPU checks of issues 6, 9 and 11 besides the benchmark, in one device call (< 10 min):
#   estimate  estimate_check.py: `lmforge estimate` against the measured peak memory of 5 configs     ~1-2 min
#   dist      ZeRO-2, ZeRO-3, ZeRO-3 offload, FSDP2 (full fine-tuning) and ZeRO-3 + LoRA, world size 1, on a
#             Qwen2.5-0.5B-shaped random model: 10 steps each with tokens/s and peak memory (lmforge_sft_timed.py
#             under torchrun), then the final checkpoint reloaded and compared with the base
#             (checkpoint_check.py)                                                                    ~4-5 min
#   tests     pytest -m gpu over tests/ (13 tests now): QLoRA (bnb 4/8-bit, hqq), LoftQ, Liger, FSDP2
#             checkpoints, export quantization (bnb, awq, fp8; gptq and eetq skip: not installable)   ~3-4 min
#   bash bench/gpu/device_checks.sh WHEEL_DIR OUT_DIR [PART...]      (parts: estimate dist tests, the default)
# WHEEL_DIR/lmforge and WHEEL_DIR/checks (build_wheelhouse.sh) are installed into /tmp/site_lmf.
# OUT_DIR gets 7 files: env.txt, estimate_measurements_gpu.json, dist_results.jsonl, dist.md, pytest.txt,
# checks.log (every command's output) and summary.md (the three results together).
# A part that would start too close to DEADLINE_S (default 560 s: estimate and dist need 2 min left, a dist run
# 1.5, tests 4) is skipped with a note in the log and summary.md: run the parts left in a second call.
# Knobs: DIST_MODES (';'-separated lmforge flag sets), DIST_ARGS (extra lmforge_sft_timed.py arguments),
# ESTIMATE_ARGS, MAKE_ARGS, PYTEST_ARGS, BENCH_WORK (/tmp/checks).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
whl=${1:?wheel dir}
out=$(realpath -m "${2:?out dir}")
shift 2
parts=${*:-estimate dist tests}
work=${BENCH_WORK:-/tmp/checks}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
t0=$SECONDS
log=$out/checks.log
stamp() { echo "[device_checks +$((SECONDS - t0))s] $*" | tee -a "$log"; }
left() { echo $(( ${DEADLINE_S:-560} - (SECONDS - t0) )); }
limit() { local l=$(( $(left) - 10 )); echo $(( l < $1 ? l : $1 )); }  # limit S: S seconds, or less if time is short

stamp "environment"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc; free -g | head -2; df -h /tmp | tail -1; which gcc g++ nvcc ninja
  python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|accelerate|pyarrow|triton|pytest[-a-z]*) '
  if ls "$whl"/lmforge/*.whl "$whl"/checks/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_lmf \
      "$whl"/lmforge/*.whl "$whl"/checks/*.whl && echo "installed $whl/lmforge and $whl/checks into /tmp/site_lmf"
  else
    echo "no wheels in $whl/lmforge and $whl/checks: running on the interpreter's own packages"
  fi
  PYTHONPATH=/tmp/site_lmf:$repo${PYTHONPATH:+:$PYTHONPATH} python3 -c 'import importlib.metadata as m
for p in ("transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "liger-kernel", "hqq", "llmcompressor",
          "compressed-tensors", "datasets", "pyarrow", "torch"):
    try: print(" ", p, m.version(p))
    except m.PackageNotFoundError: print(" ", p, "missing")'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
export PYTHONPATH=/tmp/site_lmf:$repo${PYTHONPATH:+:$PYTHONPATH}

declare -A need=([estimate]=120 [dist]=120 [tests]=240)  # seconds a part needs to be worth starting
for part in $parts; do
  if [ "$(left)" -lt "${need[$part]:-60}" ]; then stamp "skipped (too little time left): $part"; continue; fi
  case $part in
  estimate)
    stamp "estimate: lmforge estimate vs measured peak memory"
    timeout "$(limit 300)" python3 "$here/estimate_check.py" --out "$out/estimate_measurements_gpu.json" \
      ${ESTIMATE_ARGS:-} > "$work/estimate.txt" 2>&1 || stamp "estimate_check.py exit $?"
    cat "$work/estimate.txt" >> "$log"; sed -n '/cases within/,$p' "$work/estimate.txt" ;;
  dist)
    stamp "dist: a Qwen2.5-0.5B-shaped model and data"
    python3 "$here/make_model_and_data.py" --out "$work/m05" --shape 0.5b --rows 200 ${MAKE_ARGS:-} >> "$log" 2>&1
    default='tuner_type=full deepspeed=zero2;tuner_type=full deepspeed=zero3;tuner_type=full deepspeed=zero3_offload'
    default+=';tuner_type=full fsdp=full_shard;tuner_type=lora deepspeed=zero3'
    IFS=';' read -ra modes <<< "${DIST_MODES:-$default}"
    n=0
    for mode in "${modes[@]}"; do
      n=$((n + 1))
      if [ "$(left)" -lt 90 ]; then stamp "skipped (too little time left): $mode"; continue; fi
      stamp "dist: world size 1, $mode"
      rm -rf "$work/run$n"
      BENCH_OUT=$out/dist_results.jsonl timeout "$(limit 240)" python3 -m torch.distributed.run --standalone \
        --nproc_per_node 1 "$here/lmforge_sft_timed.py" --model "$work/m05/model" --data "$work/m05/data.jsonl" \
        --gc 1 --bs 4 --steps 10 --warmup 3 --label "ws1 $mode" --out_dir "$work/run$n" ${DIST_ARGS:-} $mode \
        >> "$log" 2>&1 || stamp "FAILED: $mode (see checks.log)"
      ckpt=$(ls -d "$work/run$n"/checkpoint-* 2>/dev/null | tail -1)
      [ -n "$ckpt" ] && BENCH_OUT=$out/dist_results.jsonl timeout "$(limit 120)" python3 "$here/checkpoint_check.py" \
        "$ckpt" "$work/m05/model" "$work/m05/data.jsonl" --label "ws1 $mode" >> "$log" 2>&1 \
        || stamp "checkpoint of $mode: missing or not reloadable"
      rm -rf "$work/run$n"  # optimizer states of full fine-tuning: GBs of disk each
    done
    python3 - "$out/dist_results.jsonl" > "$out/dist.md" <<'EOF'
import json
import os
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()] if os.path.exists(sys.argv[1]) else []
runs = {r['label']: r for r in rows if 'tokens_per_s' in r}  # lmforge_sft_timed.py's BENCH_RESULT
reloads = {r['label']: r for r in rows if 'same_layout' in r}  # checkpoint_check.py's RELOAD_RESULT
print('| run | tokens/s | peak alloc / reserved GiB | median step s | checkpoint reloads | tensors changed | '
      'loss base -> checkpoint |')
print('| --- | ---: | ---: | ---: | --- | ---: | --- |')
for label in dict.fromkeys([*runs, *reloads]):
    r, c = runs.get(label, {}), reloads.get(label, {})
    print(f"| {label} | {r.get('tokens_per_s', 'failed')} | {r.get('peak_mem_allocated_gib')} / "
          f"{r.get('peak_mem_reserved_gib')} | {r.get('median_step_s')} | {c.get('ok', 'n/a')} | "
          f"{c.get('tensors_changed')}/{c.get('tensors')} | {c.get('loss_base')} -> {c.get('loss_checkpoint')} |")
EOF
    cat "$out/dist.md" ;;
  tests)
    stamp "tests: pytest -m gpu"
    (cd "$repo" && timeout "$(limit 420)" python3 -m pytest -m gpu tests -q -rfEs -p no:cacheprovider \
      --continue-on-collection-errors --timeout 300 ${PYTEST_ARGS:-} > "$out/pytest.txt" 2>&1) \
      || stamp "pytest exit $?"
    tail -25 "$out/pytest.txt" ;;
  *) stamp "unknown part: $part" ;;
  esac
done

{
  echo "# device_checks.sh on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo 'no GPU')"
  echo; echo "## lmforge estimate vs measured"; sed -n '/cases within/,$p' "$work/estimate.txt" 2>/dev/null
  echo; echo "## ZeRO / FSDP2, world size 1"; cat "$out/dist.md" 2>/dev/null
  echo; echo "## pytest -m gpu"; grep -E '^(FAILED|ERROR|SKIPPED)| in [0-9.]+s' "$out/pytest.txt" 2>/dev/null
  echo; grep -h 'skipped (too little time left)' "$log"
} > "$out/summary.md" 2>> "$log"
stamp "done"
