"""make exp-data-efficiency: test R@0.5 against the number of training videos, with and without stage 1.

    python experiments/data_efficiency/run.py [--quick] [--force] [--collect]
        [exp.videos=[100,200,400,800]] [exp.stage1=[true,false]] [KEY=VALUE ...]
    make exp-data-efficiency [KEY=VALUE ...]

The full synthetic set (data.root, generated first when absent, as damo-train would) has 800
training videos by default. For each n, OUT/data_{n}/ is a derived data root whose
annotations/train.jsonl keeps the records of the first n training videos (in file order);
val.jsonl and test.jsonl are copies, so every run is tested on the same queries, and `videos`
links to the full set's videos. The runs read the videos from the full set's folder
(data.video_dir), so the decoded-video cache made for the full set serves them too.
An n that is the whole training set reads the full set itself, so those two runs are the same
runs as the ablations' `full` and `skip_stage1` and reuse them when they are on disk.
Each n is one full damo-demo run (stages 1-4) into OUT/videos{n}/, and one without stage 1
(demo.skip=[stage1]) into OUT/videos{n}_no_stage1/. Every stage trains on the n videos.

Leaves OUT/results.md (the usual columns per n and stage-1 setting), results.json and
results.png (R@0.5 against n, one line with and one without stage 1, and the constant-span
baseline). OUT: outputs/experiments/data_efficiency.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments import common  # noqa: E402

NAME = "data_efficiency"
PARAMS: dict[str, Any] = {"videos": [100, 200, 400, 800], "stage1": [True, False]}
SPLITS = ("train", "val", "test")


def full_set(extra: list[str]) -> tuple[Path, Path]:
    """(annotations folder, video folder) of the data the demo runs would use, generated when absent."""
    from omegaconf import OmegaConf

    data = common.data_config(extra)
    if any(data.splits.get(s) for s in SPLITS):
        raise SystemExit(f"{NAME}: data.splits is set; this runner needs data.annotations to be a folder of "
                         "train/val/test.jsonl")  # fmt: skip
    if data.get("generate") is not None:
        from damo_lit.data.synthetic import ensure_generated

        ensure_generated(data.root, OmegaConf.to_container(data.generate, resolve=True))
    annotations = Path(data.annotations).resolve()
    missing = [s for s in SPLITS if not (annotations / f"{s}.jsonl").is_file()]
    if missing:
        raise SystemExit(f"{NAME}: {annotations} lacks {', '.join(f'{s}.jsonl' for s in missing)}")
    return annotations, Path(data.video_dir or annotations).resolve()


def training_videos(annotations: Path) -> tuple[list[str], list[str]]:
    """(the training records' lines, each line's video) of annotations/train.jsonl."""
    lines = [line for line in (annotations / "train.jsonl").read_text().splitlines() if line.strip()]
    return lines, [json.loads(line)["video"] for line in lines]


def make_subset(annotations: Path, video_dir: Path, dest: Path, n: int) -> Path:
    """dest/annotations/{train,val,test}.jsonl with the records of the first n training videos."""
    lines, videos = training_videos(annotations)
    order = list(dict.fromkeys(videos))
    if n > len(order):
        raise SystemExit(f"{NAME}: exp.videos asks for {n} training videos; {annotations / 'train.jsonl'} "
                         f"has {len(order)} (a bigger synthetic set: data.generate.videos=... and another "
                         "data.root)")  # fmt: skip
    keep = set(order[:n])
    (dest / "annotations").mkdir(parents=True, exist_ok=True)
    kept = [line for line, video in zip(lines, videos) if video in keep]
    (dest / "annotations" / "train.jsonl").write_text("\n".join(kept) + "\n")
    for split in SPLITS[1:]:
        shutil.copyfile(annotations / f"{split}.jsonl", dest / "annotations" / f"{split}.jsonl")
    link = dest / "videos"
    if (video_dir / "videos").is_dir() and not link.exists():
        link.symlink_to(video_dir / "videos", target_is_directory=True)
    subset = {"source": str(annotations), "video_dir": str(video_dir), "train_videos": n, "train_records": len(kept)}
    (dest / "subset.json").write_text(json.dumps(subset, indent=2))
    return dest


def build_runs(opts: common.Options) -> list[common.Run]:
    """One run per (n, with / without stage 1); the derived data roots are written unless collecting."""
    counts = sorted({int(n) for n in opts.params["videos"]})
    total = -1  # collecting: the runs' overrides do not matter, only their folders
    if not opts.collect:
        annotations, video_dir = full_set(opts.extra)
        total = len(set(training_videos(annotations)[1]))
    else:
        video_dir = Path("unused")
    runs = []
    for n in counts:
        root = opts.out / f"data_{n}"
        if n == total:
            data = []  # the full set as it is: the same runs as the ablations' full and skip_stage1
        else:
            if not opts.collect:
                make_subset(annotations, video_dir, root, n)
            data = [f"data.root={root}", f"data.annotations={root / 'annotations'}", f"data.video_dir={video_dir}",
                    "data.generate=null"]  # fmt: skip
        for with_stage1 in opts.params["stage1"]:
            runs.append(common.Run(f"videos{n}" + ("" if with_stage1 else "_no_stage1"),
                                   {"videos": n, "stage 1": "yes" if with_stage1 else "no"},
                                   data + ([] if with_stage1 else ["demo.skip=[stage1]"])))  # fmt: skip
    return runs


def plot(outcomes: list[common.Outcome], path: Path) -> Path:
    series: dict[str, list[tuple[float, float | None]]] = {}
    baseline: dict[float, float] = {}
    for o in outcomes:
        n = float(o.run.label["videos"])
        name = "with stage 1" if o.run.label["stage 1"] == "yes" else "without stage 1"
        series.setdefault(name, []).append((n, o.value("test/R@0.5")))
        if o.value("test/baseline_R@0.5") is not None:
            baseline.setdefault(n, o.value("test/baseline_R@0.5"))
    series["baseline R@0.5"] = sorted(baseline.items())
    return common.plot_lines(path, series, xlabel="training videos", ylabel="test R@0.5", logx=True,
                             title="Data efficiency (damo_tiny, synthetic test split)",
                             dashed=["baseline R@0.5"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    opts = common.parse_args(argv, NAME, __doc__, PARAMS)
    common.reject_sweeps(opts.extra, NAME)
    outcomes = common.run_all(build_runs(opts), opts)
    markdown = common.write_results(outcomes, opts, "Data efficiency: test grounding against the number of "
                                    "training videos", common.standard_columns(outcomes))  # fmt: skip
    plot(outcomes, opts.out / "results.png")
    return common.finish(outcomes, opts, markdown)


if __name__ == "__main__":
    sys.exit(main())
