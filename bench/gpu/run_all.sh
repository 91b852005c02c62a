#!/usr/bin/env bash
# The GPU benchmark of issue 6 in one device call: LoRA SFT of a Qwen2.5-1.5B-shaped random model with plain
# HF Trainer+PEFT, ms-swift and lmforge, same data and hyper-parameters, then the table. Adapted from
# ../shared/bench/gpu/run_all.sh (the recipe shared with lmforge): lmforge is the third row, each framework runs
# on its own installed stack, and a row never outlives the call.
#   bash bench/gpu/run_all.sh WHEEL_DIR OUT_DIR       (WHEEL_DIR: build_wheelhouse.sh's folder, e.g. .whl)
# Stacks: WHEEL_DIR/swift goes to /tmp/site_swift (HF and ms-swift rows: the image's transformers 5.17.0, peft
# 0.20.0, as in the shared recipe), WHEEL_DIR/lmforge to /tmp/site_lmf (lmforge: transformers 5.23.0, peft 0.21.2,
# liger-kernel). No wheels: rows run on whatever the interpreters have (the CPU smoke test).
# Row groups (ROWS, default all four, in this order; gc = gradient checkpointing):
#   gc0     hf, ms-swift, lmforge with gc off        gc1    the same with gc on
#   liger   lmforge gc off with --use_liger_kernel (if it fails: again with --use_logits_to_keep false)
#   extras  hf on lmforge's stack (what transformers 5.23/peft 0.21.2 alone change), repeats of lmforge and
#           ms-swift gc off (run-to-run spread)
# OUT_DIR gets env.txt, matmul.json, model_info.json, results.jsonl, runs.log and table.md (rewritten after
# every row, so a call cut short still returns a table).
# Knobs: MAKE_ARGS, HF_ARGS, SWIFT_ARGS, LMF_ARGS (extra arguments of make_model_and_data.py, hf_baseline.py,
# run_swift.sh, lmforge_sft_timed.py); PY_HF, PY_SWIFT, PY_LMF (interpreters, default python3); RUN_TIMEOUT
# (s per row, 200); DEADLINE_S (570: no row runs past it; the device call's limit is 600); BENCH_WORK (/tmp/bench).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
whl=${1:?wheel dir}
out=$(realpath -m "${2:?out dir}")
work=${BENCH_WORK:-/tmp/bench}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OUT_DIR=/tmp/swift_out BENCH_OUT="$out/results.jsonl"
t0=$SECONDS
stamp() { echo "[run_all +$((SECONDS - t0))s] $*"; }
py_hf=${PY_HF:-python3} py_swift=${PY_SWIFT:-python3} py_lmf=${PY_LMF:-python3}
site_swift='' site_lmf=''

install() {  # install DIR TARGET: DIR's wheels into TARGET (no network, no dependency resolution)
  ls "$1"/*.whl >/dev/null 2>&1 || { echo "no wheels in $1"; return 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$1"/*.whl
}

table() {
  [ -s "$out/results.jsonl" ] && python3 "$here/summarize.py" "$out/results.jsonl" "$out/model_info.json" \
    "$out/matmul.json" > "$out/table.md" 2>> "$out/runs.log"
}

row() {  # row LABEL SITE COMMAND...: one training run on the stack SITE, within the call's deadline
  local label=$1 site=$2 left; shift 2
  left=$(( ${DEADLINE_S:-570} - (SECONDS - t0) - 10 ))
  if [ $left -lt 60 ]; then stamp "skipped (too little time left): $label"; return 1; fi
  stamp "$label"
  echo "===== $label" >> "$out/runs.log"
  PYTHONPATH=$site timeout $(( left < ${RUN_TIMEOUT:-200} ? left : ${RUN_TIMEOUT:-200} )) "$@" >> "$out/runs.log" 2>&1
  local rc=$?
  [ $rc = 0 ] || echo "$label FAILED (exit $rc, see runs.log)"
  table
  return $rc
}

stamp "environment"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc; free -g | head -2; df -h /tmp | tail -1
  python3 -c 'import sys, platform; print(sys.version); print(platform.platform())'
  python3 -m pip list 2>/dev/null \
    | grep -iE '^(torch|transformers|peft|accelerate|tokenizers|safetensors|huggingface.hub|numpy|pyarrow|triton) '
} > "$out/env.txt" 2>&1
if install "$whl/swift" /tmp/site_swift >> "$out/env.txt" 2>&1; then site_swift=/tmp/site_swift; fi
if install "$whl/lmforge" /tmp/site_lmf >> "$out/env.txt" 2>&1; then site_lmf=/tmp/site_lmf; fi
versions='import importlib.metadata as m
for p in ("transformers", "peft", "trl", "datasets", "ms-swift", "liger-kernel", "torch"):
    try: print(" ", p, m.version(p))
    except m.PackageNotFoundError: print(" ", p, "missing")'
{
  echo "HF and ms-swift stack ($py_hf / $py_swift, PYTHONPATH=$site_swift):"
  PYTHONPATH=$site_swift "$py_swift" -c "$versions"
  echo "lmforge stack ($py_lmf, PYTHONPATH=$site_lmf):"
  PYTHONPATH=$site_lmf "$py_lmf" -c "$versions"
} >> "$out/env.txt" 2>&1
cat "$out/env.txt"

stamp "matmul peak"
python3 "$here/matmul_peak.py" > "$out/matmul.json" 2>> "$out/runs.log" || echo '{"tflops": null}' > "$out/matmul.json"
cat "$out/matmul.json"

stamp "model and data"
python3 "$here/make_model_and_data.py" --out "$work" ${MAKE_ARGS:-} 2>> "$out/runs.log" \
  | tail -1 > "$out/model_info.json"
cat "$out/model_info.json"
model=$work/model data=$work/data.jsonl

hf() { row "hf gc=$1${4:-}" "$2" env LABEL_SUFFIX="${4:-}" "$3" "$here/hf_baseline.py" --model "$model" --data "$data" \
  --gc $1 ${HF_ARGS:-}; }
swift() { row "ms-swift gc=$1" "$site_swift" env PYTHON="$py_swift" bash "$here/run_swift.sh" "$model" "$data" $1 \
  ${SWIFT_ARGS:-}; }
lmf() { local gc=$1; shift; row "lmforge gc=$gc${*:+ $*}" "$site_lmf" "$py_lmf" "$here/lmforge_sft_timed.py" \
  --model "$model" --data "$data" --gc $gc ${LMF_ARGS:-} "$@"; }

for group in ${ROWS:-gc0 gc1 liger extras}; do
  case $group in
    gc0|gc1) gc=${group#gc}; hf $gc "$site_swift" "$py_hf"; swift $gc; lmf $gc ;;
    liger) lmf 0 use_liger_kernel=true || lmf 0 use_liger_kernel=true use_logits_to_keep=false ;;
    extras) hf 0 "$site_lmf" "$py_lmf" ' on the lmforge stack'; lmf 0; swift 0 ;;
    *) echo "unknown row group: $group" ;;
  esac
done
grep -E '^(Traceback|[A-Za-z_.]*(Error|Exception)\b)' "$out/runs.log" | sort | uniq -c | head -20

stamp "table"
table
cat "$out/table.md"
stamp "done"
