"""make exp-fusion-depth: test grounding against the depth of the T-Fuseformer.

    python experiments/fusion_depth/run.py [--quick] [--force] [--collect] [KEY=VALUE ...]
    make exp-fusion-depth [KEY=VALUE ...]

A sweep over model.fuseformer.depth = 1, 2, 4, in Hydra's multirun grammar. damo-demo composes
its four stages with Hydra's compose API, not @hydra.main, so `-m` cannot drive it: the sweep is
expanded here with Hydra's own override parser (the same grammar: `1,2,4`, `range(1,9,2)`,
`choice(...)`) and each point is one full damo-demo run (stages 1-4) into OUT/depth{d}/, one
after the other, as Hydra's basic launcher would. `model.fuseformer.depth=2,6` sweeps other
depths; another sweep word (`model.fuseformer.heads=2,4`) adds a dimension to the grid.

Leaves OUT/results.md (depth, test R@0.3/0.5/0.7, mIoU, R@0.5 on audio-only, visual-only and
audio-visual queries, parse rate, the constant-span baseline's R@0.5, minutes), results.json and
results.png (R@0.5 and mIoU against depth). OUT: outputs/experiments/fusion_depth.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments import common  # noqa: E402

NAME = "fusion_depth"
DEPTH = "model.fuseformer.depth"
DEFAULT_SWEEP = {DEPTH: ["1", "2", "4"]}


def short(key: str) -> str:
    return key.lstrip("+~").rsplit(".", 1)[-1]


def build_runs(extra: list[str]) -> tuple[list[common.Run], list[str]]:
    """(one run per grid point, the user's other overrides); a plain depth=N sweeps that one depth."""
    plain, sweeps = common.split_sweeps(extra)
    rest = []
    for word in plain:
        key, _, value = word.partition("=")
        if key == DEPTH:
            sweeps[DEPTH] = [value]
        else:
            rest.append(word)
    grid = {**DEFAULT_SWEEP, **sweeps}
    runs = []
    for point in common.sweep_points(grid):
        name = "_".join(f"{short(k)}{v}" for k, v in point.items())
        runs.append(common.Run(name, {short(k): v for k, v in point.items()}, [f"{k}={v}" for k, v in point.items()]))
    return runs, rest


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def plot(outcomes: list[common.Outcome], path: Path) -> Path:
    """R@0.5 and mIoU against depth; one pair of lines per setting of any other swept key."""
    series: dict[str, list[tuple[float, float | None]]] = {}
    for o in outcomes:
        others = " ".join(f"{k}={v}" for k, v in o.run.label.items() if k != "depth")
        x = number(str(o.run.label["depth"]))
        for header, key in (("R@0.5", "test/R@0.5"), ("mIoU", "test/mIoU"), ("baseline R@0.5", "test/baseline_R@0.5")):
            name = header if header.startswith("baseline") else f"{header} {others}".strip()
            series.setdefault(name, []).append((x, o.value(key)))
    baseline = series.pop("baseline R@0.5")
    series["baseline R@0.5"] = sorted({x: y for x, y in baseline if y is not None}.items())
    return common.plot_lines(path, series, xlabel="T-Fuseformer depth (model.fuseformer.depth)",
                             ylabel="test figure", title="Fusion depth (damo_tiny, synthetic test split)",
                             dashed=["baseline R@0.5"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    opts = common.parse_args(argv, NAME, __doc__)
    runs, opts.extra = build_runs(opts.extra)
    outcomes = common.run_all(runs, opts)
    markdown = common.write_results(outcomes, opts, "Fusion depth: test grounding against model.fuseformer.depth",
                                     common.standard_columns(outcomes))  # fmt: skip
    plot(outcomes, opts.out / "results.png")
    return common.finish(outcomes, opts, markdown)


if __name__ == "__main__":
    sys.exit(main())
