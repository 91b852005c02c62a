#!/usr/bin/env bash
# The wheels the GPU machine lacks (it has no network), for CPython 3.12 on manylinux x86_64, whatever this
# machine's own Python is. Three folders, because the ms-swift and lmforge stacks conflict (peft 0.20 vs 0.21.2,
# trl, datasets) and each is installed into its own --target:
#   DEST/swift    ms-swift 4.6.0 and what it needs beyond the image: the list of ../shared/bench/gpu/
#                 build_wheelhouse.sh (the recipe shared with lmforge), unchanged                        ~27 MB
#   DEST/lmforge  lmforge's training stack beyond the image: transformers 5.23.0 (the image's 5.17.0 lacks the
#                 TrainingArguments names lmforge passes), peft 0.21.2, liger-kernel 0.8.5              ~15 MB
#   DEST/checks   what device_checks.sh adds: bitsandbytes (CUDA 13 libraries only), deepspeed and hqq (both
#                 sdist-only on PyPI: built here into py3-none-any wheels, their ops JIT-compiled there),
#                 llm-compressor (awq/fp8 export), datasets, pydantic (deepspeed, compressed-tensors)    ~12 MB
#   bash bench/gpu/build_wheelhouse.sh [DEST]      (default: .whl in the repo root, git-ignored; ~1 min)
# PYTHON (default .venv/bin/python) builds the sdists: it needs torch, setuptools and wheel importable.
# Not available for the image's torch 2.11: gptqmodel (7.x needs torch >= 2.14.1), eetq (no files on PyPI).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dest=$(realpath -m "${1:-$repo/.whl}")
py=${PYTHON:-$repo/.venv/bin/python}
rm -rf "$dest/swift" "$dest/lmforge" "$dest/checks"
mkdir -p "$dest/swift" "$dest/lmforge" "$dest/checks"

get() {  # get FOLDER NAME==VERSION...: binary wheels for cp312 manylinux x86_64, no dependencies
  local to=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 -d "$to" "$@"
}

build() {  # build FOLDER NAME==VERSION: a pure-Python wheel from the sdist (no compiled ops)
  local to=$1 spec=$2 tmp
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "$spec"
  DS_BUILD_OPS=0 DISABLE_CUDA=1 "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$to" "$tmp"/*.tar.gz
  rm -rf "$tmp"
}

get "$dest/swift" \
  ms-swift==4.6.0 peft==0.20.0 trl==0.29.1 datasets==4.8.4 dill==0.4.1 multiprocess==0.70.19 \
  modelscope==1.40.2 modelscope-hub==0.5.1 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 \
  dacite==1.9.2 addict==2.4.0 attrdict==2.0.1 binpacking==2.0.1 json-repair==0.64.6 \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.3 pydantic-core==2.50.4 \
  annotated-types==0.8.0 typing-inspection==0.4.5 openai==3.54.0 distro==1.9.0 jiter==0.19.0 \
  sniffio==1.3.1 nltk==3.10.4 zstandard==0.25.0 importlib-metadata==10.2.0 cpm-kernels==1.0.11

get "$dest/lmforge" transformers==5.23.0 peft==0.21.2 liger-kernel==0.8.5

get "$dest/checks" bitsandbytes==0.50.2 hjson==3.1.0 pydantic==2.14.3 pydantic-core==2.50.4 \
  annotated-types==0.8.0 typing-inspection==0.4.5 termcolor==3.3.0 llmcompressor==0.14.0.1 \
  compressed-tensors==0.19.0 loguru==0.7.3 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
build "$dest/checks" deepspeed==0.19.8
build "$dest/checks" hqq==0.2.8.post1

# bitsandbytes ships one library per CUDA/ROCm release (43 MB); the image's torch is cu130: keep CUDA 13 and CPU.
python3 - "$dest"/checks/bitsandbytes-*.whl <<'EOF'
import re, sys, zipfile
path = sys.argv[1]
drop = re.compile(r'bitsandbytes/libbitsandbytes_(cuda1[12]\d|rocm\d+|xpu\d+)\.so$')
with zipfile.ZipFile(path) as src:
    items = [(i, src.read(i)) for i in src.infolist() if not drop.search(i.filename)]
with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as out:
    for info, data in items:
        if info.filename.endswith('.dist-info/RECORD'):
            data = b''.join(l for l in data.splitlines(True) if not drop.search(l.split(b',')[0].decode()))
        out.writestr(info, data)
EOF

for d in swift lmforge checks; do echo "$d: $(ls "$dest/$d" | wc -l) wheels, $(du -sh "$dest/$d" | cut -f1)"; done
du -sh "$dest"
