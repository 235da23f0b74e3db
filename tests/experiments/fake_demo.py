"""A stand-in for damo-demo in the runner tests: no training, OUT/summary.json made from its arguments.

R@0.5 is depth / 10 when model.fuseformer.depth=D is given, else 0.6; audio-only R@0.5 is 0.2 with
model.audio.enabled=false, else 0.55; the baseline is 0.3 (0.28 on audio-only queries). demo.skip
leaves stages out, as damo-demo does. `fake.fail=true` fails after stage 1 the way damo-demo does
(a summary without seconds.total, exit code 3). Every call appends its run name to OUT/../calls.txt;
the summary also records OMP_NUM_THREADS as the runner set it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def value(args: list[str], key: str, default: str | None = None) -> str | None:
    found = [a.split("=", 1)[1] for a in args if a.startswith(key + "=")]
    return found[-1] if found else default


def main() -> int:
    args = sys.argv[1:]
    out = Path(value(args, "demo.out_dir"))
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / "calls.txt").open("a") as calls:
        calls.write(out.name + "\n")
    skip = value(args, "demo.skip", "[]").strip("[]").split(",")
    depth = value(args, "model.fuseformer.depth")
    r05 = int(depth) / 10 if depth else 0.6
    audio = 0.2 if value(args, "model.audio.enabled") == "false" else 0.55
    grounding = {"test/R@0.3": r05 + 0.2, "test/R@0.5": r05, "test/R@0.7": r05 - 0.2, "test/mIoU": r05 - 0.1,
                 "test/R@0.5_audio": audio, "test/R@0.5_visual": 0.65, "test/R@0.5_audio-visual": 0.7,
                 "test/parse_rate": 0.99, "test/baseline_R@0.5": 0.3, "test/baseline_R@0.5_audio": 0.28}  # fmt: skip
    stages = {"stage1": {"test/t2v_R@1": 0.5}, "stage2": {"test/loss": 5.0}, "stage3": dict(grounding),
              "stage4": {k: v + 0.01 for k, v in grounding.items()}}  # fmt: skip
    summary = {"stages": {}, "seconds": {}, "argv": args, "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    for key, metrics in stages.items():
        if key in skip:
            continue
        summary["stages"][key] = metrics
        summary["seconds"][key] = 30.0
        if value(args, "fake.fail") == "true":
            (out / "summary.json").write_text(json.dumps(summary))
            return 3
    summary["seconds"]["total"] = 30.0 * len(summary["stages"])
    (out / "summary.json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
