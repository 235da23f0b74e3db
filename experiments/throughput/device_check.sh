#!/usr/bin/env bash
# The GPU check for a session that is lent a device machine (DEVELOPERS.md, GPU checks): stage 3
# with damo_paper on random weights under FSDP in bf16-mixed (experiments/throughput/fsdp_paper.py),
# which the CPU cannot run. Two halves:
#
#   here (network to the package index):   experiments/throughput/device_check.sh wheels
#       writes .whl/ with the pure-Python packages the device image lacks (hydra-core, omegaconf,
#       antlr4-python3-runtime) or holds at other versions (transformers, peft, lightning: the
#       versions .venv tests here), and adds .whl/ to .git/info/exclude; torch stays the image's;
#   there (the device tool's run, carry [".whl"]):   experiments/throughput/device_check.sh run
#       installs them into /tmp/site, records the card and versions, runs fsdp_paper.py's
#       checkpoint save + resume check at RESUME_BATCH (default 8; 0 skips it) within RESUME_TIMEOUT
#       seconds (default 240), then fsdp_paper.py over BATCHES (default [1,8,32,64,128]; STEPS timed
#       after WARMUP, 3 and 1) within FSDP_TIMEOUT seconds (default 420), and copies the figures and
#       logs into $OUT (env.txt, fsdp_resume.json, fsdp_resume.log, fsdp_paper.json, fsdp_paper.log,
#       children.log).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
case "${1:-}" in
  wheels)
    freeze=$(.venv/bin/python -m pip freeze 2>/dev/null)
    pins=()
    for name in hydra-core omegaconf antlr4-python3-runtime transformers peft lightning; do
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
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
      "$PYTHON" -c "import sys, torch, lightning, transformers, peft; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__, \
'peft', peft.__version__, 'cuda', torch.cuda.is_available())"; nproc; free -g; } > "$OUT/env.txt" 2>&1
    cat "$OUT/env.txt"
    work=$(mktemp -d)
    rc_resume=0
    if [ -n "${RESUME_BATCH:-8}" ] && [ "${RESUME_BATCH:-8}" != 0 ]; then
      timeout "${RESUME_TIMEOUT:-240}" "$PYTHON" experiments/throughput/fsdp_paper.py devices=1 resume=true \
        "resume_batch=${RESUME_BATCH:-8}" steps=1 warmup=1 "out=$work" > "$OUT/fsdp_resume.log" 2>&1
      rc_resume=$?
      cp "$work/fsdp_resume.json" "$OUT/" 2>/dev/null
      for log in "$work"/fsdp_resume_save.log "$work"/fsdp_resume_resume.log; do
        [ -f "$log" ] && { echo "=== $log"; tail -n 80 "$log"; }; done >> "$OUT/children.log"
      cat "$OUT/fsdp_resume.log"; echo "device_check: the resume check exited $rc_resume"
    fi
    timeout "${FSDP_TIMEOUT:-420}" "$PYTHON" experiments/throughput/fsdp_paper.py devices=1 \
      "batch_sizes=${BATCHES:-[1,8,32,64,128]}" "steps=${STEPS:-3}" "warmup=${WARMUP:-1}" "out=$work" > "$OUT/fsdp_paper.log" 2>&1
    rc=$?
    cp "$work/fsdp_paper.json" "$OUT/" 2>/dev/null
    for log in "$work"/fsdp_paper_b*.log; do [ -f "$log" ] && { echo "=== $log"; cat "$log"; }; done >> "$OUT/children.log"
    cat "$OUT/fsdp_paper.log"; tail -n 60 "$OUT/children.log"
    echo "device_check: fsdp_paper.py exited $rc"
    [ "$rc" -ne 0 ] && exit "$rc"
    exit "$rc_resume"
    ;;
  *)
    echo "usage: $0 wheels   (here: fetch the wheels the device image lacks into .whl/)" >&2
    echo "       $0 run      (there, with .whl carried: the FSDP paper-size check into \$OUT)" >&2
    exit 2
    ;;
esac
