#!/usr/bin/env bash
# The GPU check for a session that is lent a device machine (DEVELOPERS.md, GPU checks): stage 3
# with damo_paper on random weights under FSDP in bf16-mixed (experiments/throughput/fsdp_paper.py),
# which the CPU cannot run. Two halves:
#
#   here (network to the package index):   experiments/throughput/device_check.sh wheels
#       writes .whl/ with the pure-Python packages the device image lacks (hydra-core, omegaconf,
#       antlr4-python3-runtime; torch, lightning, transformers, peft, safetensors are there) and
#       adds .whl/ to .git/info/exclude;
#   there (the device tool's run, carry [".whl"]):   experiments/throughput/device_check.sh run
#       installs them into /tmp/site, records the card and versions, runs fsdp_paper.py over
#       BATCHES (default [1,4,16]) with FSDP_TIMEOUT seconds (default 420) and copies the
#       figures and logs into $OUT (fsdp_paper.json, fsdp_paper.log, gpu.txt, versions.txt).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
case "${1:-}" in
  wheels)
    freeze=$(.venv/bin/python -m pip freeze 2>/dev/null)
    pins=()
    for name in hydra-core omegaconf antlr4-python3-runtime; do
      pin=$(grep -i "^${name}==" <<<"$freeze") || { echo "device_check: $name is not in .venv (make venv first)" >&2; exit 1; }
      pins+=("$pin")
    done
    rm -rf .whl && mkdir -p .whl
    .venv/bin/python -m pip wheel -q --no-deps -w .whl "${pins[@]}" || exit 1
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    ls -l .whl
    ;;
  run)
    OUT=${OUT:-outputs/device}
    mkdir -p "$OUT"
    ls .whl/*.whl >/dev/null 2>&1 || { echo "device_check: no .whl/ here (run 'wheels' first, carry .whl)" >&2; exit 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD/src:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") > "$OUT/gpu.txt" 2>&1
    "$PYTHON" -c "import sys, torch, lightning, transformers, peft; print(sys.version.split()[0], torch.__version__, \
lightning.__version__, transformers.__version__, peft.__version__, torch.cuda.is_available())" > "$OUT/versions.txt" 2>&1
    cat "$OUT/gpu.txt" "$OUT/versions.txt"
    work=$(mktemp -d)
    timeout "${FSDP_TIMEOUT:-420}" "$PYTHON" experiments/throughput/fsdp_paper.py devices=1 \
      "batch_sizes=${BATCHES:-[1,4,16]}" steps=4 warmup=2 "out=$work" > "$OUT/fsdp_paper.log" 2>&1
    rc=$?
    cp "$work/fsdp_paper.json" "$OUT/" 2>/dev/null
    tail -n 40 "$OUT/fsdp_paper.log"
    echo "device_check: fsdp_paper.py exited $rc"
    exit $rc
    ;;
  *)
    echo "usage: $0 wheels   (here: fetch the wheels the device image lacks into .whl/)" >&2
    echo "       $0 run      (there, with .whl carried: the FSDP paper-size check into \$OUT)" >&2
    exit 2
    ;;
esac
