"""damo-data: generate the synthetic set, validate DaMO JSONL files, count what a data config reads.

    damo-data synth --out DIR --videos N --seed S [--fps 8 --size 64 --min-seconds 8 --max-seconds 20 --workers 2
                                                   --faults 0.1] [--force]
    damo-data validate FILE [FILE ...]
    damo-data stats data=NAME [hydra overrides ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

EPILOG = """examples:
  damo-data synth --out outputs/data/synthetic --videos 1000 --seed 0
  damo-data validate outputs/data/synthetic/annotations/train.jsonl
  damo-data stats data=charades_sta data.annotations=../shared/data/charades_sta/charades_sta_test.txt \\
      data.durations=../shared/data/charades_sta/Charades_v1_test.csv
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="damo-data",
        description="DaMO data tools: the synthetic audio-visual grounding set, the record schema, dataset statistics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{synth,validate,stats}")

    synth = sub.add_parser(
        "synth",
        help="generate synthetic MP4s (H.264 + AAC) and DaMO JSONL annotations",
        description="Write DIR/videos/*.mp4 and DIR/annotations/{train,val,test}.jsonl (80/10/10 of --videos) and "
        "DIR/synth.json. The same --seed gives identical annotations and pixels. A DIR that already holds the set "
        "these parameters make is left as it is (as training's data.generate does); an interrupted run (Ctrl-C) "
        "of the same parameters is continued, keeping its rendered videos; a set made with other parameters (or "
        "an unknown unfinished one) is refused unless --force.",
    )
    synth.add_argument("--out", required=True, type=Path, help="output folder")
    synth.add_argument("--videos", type=int, default=1000, help="number of videos over all splits (default 1000)")
    synth.add_argument("--seed", type=int, default=0, help="seed of every split's stream (default 0)")
    synth.add_argument("--fps", type=int, default=8, help="frames per second (default 8)")
    synth.add_argument("--size", type=int, default=64, help="frame width and height in pixels (default 64)")
    synth.add_argument("--min-seconds", type=float, default=8.0, help="shortest video (default 8)")
    synth.add_argument("--max-seconds", type=float, default=20.0, help="longest video (default 20)")
    synth.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    synth.add_argument("--faults", type=float, default=0.0,
                       help="share of each split's videos to break (garbage bytes, zero bytes, missing file, no audio "
                       "stream; named in DIR/synth.json) for reliability tests (default 0)")
    synth.add_argument("--force", action="store_true",
                       help="generate again even when DIR holds a set: remove DIR/videos/, DIR/annotations/ and "
                       "DIR/synth.json first (nothing else in DIR)")

    validate = sub.add_parser(
        "validate",
        help="check DaMO JSONL files against the schema",
        description="Check every record (the schema, 'video' relative to data.video_dir, ids unique across the "
        "files given); print file:line and the reason of each bad one and exit 1, or print the count and exit 0.",
    )
    validate.add_argument("files", nargs="+", type=Path, help="DaMO JSONL files")

    stats = sub.add_parser(
        "stats",
        help="count the samples, videos and fix-ups of a data config",
        description="Compose conf/data_stats.yaml with the given Hydra overrides (data=NAME, data.annotations=..., "
        "...), load every source and print counts; the last line is one JSON object with samples, videos, "
        "videos_missing (annotated videos not found under data.video_dir) and fixes. Totals count each annotation "
        "file once: a split that reads a file another split read (val and test, when only data.splits.train is "
        "set) says so; splits_missing lists splits whose file is not there. Exit status 1 when no sample is kept.",
    )
    stats.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=charades_sta data.annotations=FILE")
    return parser


def existing_set_refusal(out: Path, cfg: Any, force: bool) -> tuple[bool, str] | None:
    """What to do about a set already in `out` before generating `cfg` there: None to generate
    (nothing there; an interrupted run of this very set, which generating continues; or --force,
    after which the old set has been removed), else (True, why) when
    the very set is there already (nothing to do but render again any of its videos that is
    missing), or (False, why) to refuse."""
    from damo_lit.data.synthetic import (
        clear_set,
        holds_a_set,
        is_generated,
        listed,
        manifest_path,
        partial_manifest_path,
        restore_videos,
        set_differences,
        unfinished_matches,
    )

    if not holds_a_set(out):
        return None
    if is_generated(out):
        differences = set_differences(out, cfg)
        if not differences and not force:
            restored = restore_videos(out, cfg)
            done = (f"{len(restored)} of its videos were missing ({listed(restored)}): rendered them again"
                    if restored else "nothing written")
            return True, (f"{out} already holds this set ({cfg.videos} videos, seed {cfg.seed}); {done} "
                          "(--force generates it again)")
        what = f"a synthetic set made with other parameters ({'; '.join(differences)})"
    elif unfinished_matches(out, cfg) and not force:
        return None  # generate() keeps the videos this set's interrupted run rendered
    else:
        what = f"an unfinished or unknown set (videos/ or annotations/ without a complete {manifest_path(out).name})"
        partial = partial_manifest_path(out)
        if partial.is_file():
            what = f"an unfinished set of other parameters (see {partial})"
    if not force:
        return False, (f"{out} already holds {what}; generating into it would mix the two sets. Use another --out, "
                       "or add --force to remove its videos/, annotations/ and synth.json first")
    clear_set(out)
    return None


def out_problem(out: Path) -> str | None:
    """Why --out cannot be the set's folder (it, or a folder above it, is a file), or None."""
    for path in (out, *out.parents):
        if path.exists():
            if path.is_dir():
                return None
            return f"--out {out} is a file; expected a folder" if path == out else f"--out {out}: {path} is a file"
    return None


def cmd_synth(args: argparse.Namespace) -> int:
    from damo_lit.data.synthetic import SynthConfig, generate, generation_lock, split_sizes, unfinished_matches

    problem = out_problem(args.out)
    if problem is not None:
        print(f"damo-data synth: {problem}", file=sys.stderr)
        return 2
    try:
        cfg = SynthConfig(
            videos=args.videos,
            seed=args.seed,
            fps=args.fps,
            size=args.size,
            min_seconds=args.min_seconds,
            max_seconds=args.max_seconds,
            workers=args.workers,
            faults=args.faults,
        )
    except ValueError as err:
        print(f"damo-data synth: {err}", file=sys.stderr)
        return 2
    empty = [split for split, count in split_sizes(cfg.videos).items() if count == 0]
    if empty:
        print(f"damo-data synth: note: --videos {cfg.videos} leaves the {' and '.join(empty)} split(s) empty "
              "(80/10/10, rounded); training validates on val and tests on test, so give --videos 6 or more",
              file=sys.stderr)
    with generation_lock(args.out):  # not beside a training run generating into the same folder
        refusal = existing_set_refusal(args.out, cfg, args.force)
        if refusal is not None:
            done, message = refusal
            print(f"damo-data synth: {message}", file=sys.stdout if done else sys.stderr)
            return 0 if done else 1
        start = time.time()
        if unfinished_matches(args.out, cfg):
            print(f"damo-data synth: continuing the unfinished set in {args.out} (its rendered videos are kept)")
        try:
            result = generate(args.out, cfg)
        except KeyboardInterrupt:
            return 130  # generate said how far it got and how to go on
    size = sum(p.stat().st_size for p in (args.out / "videos").glob("*.mp4"))
    print(
        f"wrote {result.videos} videos ({size / 1e6:.0f} MB) and "
        + ", ".join(f"{n} {split} records" for split, n in result.records.items())
        + f" to {args.out} in {time.time() - start:.0f} s"
    )
    if cfg.faults:
        from damo_lit.data.synthetic import manifest_path, read_faults

        kinds = Counter(read_faults(args.out).values())
        print(f"faulty videos: {sum(kinds.values())} (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
              + f"), listed in {manifest_path(args.out)}")
    return 0


def unreadable_file(path: Path) -> str | None:
    """Why `path` is not a DaMO JSONL file to check (a folder, nothing there, no record in it), or None."""
    from damo_lit.data.schema import json_lines

    if path.is_dir():
        found = sorted(path.glob("*.jsonl")) or sorted(path.glob("annotations/*.jsonl"))
        hint = f" such as {', '.join(map(str, found[:3]))}" if found else ""
        return f"{path}: is a folder; expected a DaMO .jsonl file{hint}"
    if not path.is_file():
        return f"{path}: file not found"
    if next(iter(json_lines(path)), None) is None:
        return f"{path}: no records (the file is empty or holds only blank lines)"
    return None


PUBLIC_FORMATS = "charades_sta, activitynet_captions, qvhighlights, caption_list"


def cmd_validate(args: argparse.Namespace) -> int:
    from damo_lit.data.schema import validate_files
    from damo_lit.data.sources.base import MAX_LISTED_ERRORS

    files: list[Path] = []
    for path in args.files:  # one file named twice is checked once (its ids would all repeat)
        if any(path.resolve() == seen.resolve() for seen in files):
            print(f"{path}: named more than once; checked once", file=sys.stderr)
        else:
            files.append(path)
    problems = [(path, unreadable_file(path)) for path in files]
    for _, problem in problems:
        if problem is not None:
            print(problem, file=sys.stderr)
    readable = [path for path, problem in problems if problem is None]
    good, errors = validate_files(readable)
    for path in readable:
        prefix = f"{path}:"
        own = [error for error in errors if error.where.startswith(prefix)]
        for error in own[:MAX_LISTED_ERRORS]:
            print(str(error), file=sys.stderr)
        if len(own) > MAX_LISTED_ERRORS:
            print(f"  ... and {len(own) - MAX_LISTED_ERRORS} more bad record(s) in {path}", file=sys.stderr)
        if own and _none_is_damo(path):
            print(f"{path}: no record is DaMO JSONL. A file in a public format is read by its source: "
                  f"damo-data stats data=NAME data.annotations={path} (NAME: {PUBLIC_FORMATS})", file=sys.stderr)
    bad = sum(problem is not None for _, problem in problems) + len(errors)
    if bad:
        print(f"{bad} bad record(s), {good} good", file=sys.stderr)
        return 1
    print(f"{good} records OK")
    return 0


def _none_is_damo(path: Path) -> bool:
    """Whether every line of `path` fails the record schema itself (a file in another format), not
    only the checks across records (duplicate ids, video paths)."""
    from damo_lit.data.schema import RecordError, read_jsonl

    return all(isinstance(item, RecordError) for _, item in read_jsonl(path))


def _split_names(specs: Sequence[Any]) -> tuple[list[str | None], dict[str, str]]:
    """The splits whose annotation files exist, and {split: file} of those whose do not. A file
    named in data.splits that is not there is an error (a typo there would otherwise vanish)."""
    from damo_lit.data.sources.base import SPLITS

    if not any(spec.has_split_files() for spec in specs):
        return [None], {}
    present: list[str | None] = []
    absent: dict[str, str] = {}
    for split in SPLITS:
        missing = [spec for spec in specs if not spec.annotation_file(split).is_file()]
        for spec in missing:
            if spec.splits.get(split):
                raise FileNotFoundError(f"{spec.key}.splits.{split}={spec.splits[split]}: no such file")
        if missing:
            absent[split] = str(missing[0].annotation_file(split))
        else:
            present.append(split)
    return present, absent


def collect_stats(data_cfg: Any) -> dict[str, Any]:
    """Counts of what a data config reads (every task, every split it has), fix-ups included.

    A split reads, per source, its own file or the shared `annotations` (val and test alike when
    only data.splits.train is set): each split counts what it reads, but the totals (samples,
    videos, tasks, modalities, sources, fixes) count each source's file once, and a split that
    reads a file an earlier split read names that split (`shares_file_with`)."""
    from omegaconf import OmegaConf

    from damo_lit.data.collection import source_specs
    from damo_lit.data.sources import Fixes

    options = OmegaConf.to_container(data_cfg, resolve=True)
    assert isinstance(options, dict)
    specs = source_specs(options)
    splits, absent = _split_names(specs)
    if not splits:
        raise FileNotFoundError(
            f"no split has its annotation file for {', '.join(s.label for s in specs)} (data.annotations / data.splits)"
        )
    read: dict[tuple[int, Path], tuple[str, Any]] = {}  # (source, file) -> the split that read it first, what it read
    per_split: dict[str, Any] = {}
    for split in splits:
        name = split or "all"
        parts, shared = _read_split(specs, split, name, read)
        samples = [sample for part in parts for sample in part.samples]
        per_split[name] = {"samples": len(samples), "videos": len({s.video_path for s in samples})}
        if shared:
            per_split[name]["shares_file_with"] = shared
    distinct = [part for _, part in read.values()]
    samples = [sample for part in distinct for sample in part.samples]
    fixes = Fixes()
    sources: Counter[str] = Counter()
    for part in distinct:
        fixes.merge(part.fixes)
        sources.update(part.per_source)
    videos = {s.video_path for s in samples}
    missing = sorted(v for v in videos if not Path(v).is_file())
    return {
        "data": options.get("name") or specs[0].label,
        "samples": len(samples),
        "videos": len(videos),
        "videos_missing": len(missing),
        "missing_examples": missing[:3],
        "splits": per_split,
        "splits_missing": absent,
        "tasks": dict(sorted(Counter(s.record.task for s in samples).items())),
        "modalities": dict(sorted(Counter(s.record.modality or "none" for s in samples).items())),
        "sources": dict(sources),
        "fixes": fixes.counts,
    }


def _read_split(
    specs: Sequence[Any], split: str | None, name: str, read: dict[tuple[int, Path], tuple[str, Any]]
) -> tuple[list[Any], list[str]]:
    """What each source gives split `name`, each source file read once (`read` keeps what an
    earlier split read), and the earlier splits whose file(s) it shares."""
    from damo_lit.data.collection import load_split

    parts, shared = [], []
    for index, spec in enumerate(specs):
        key = (index, spec.annotation_file(split))
        if key not in read:
            read[key] = (name, load_split([spec], split))
        earlier, part = read[key]
        if earlier != name and earlier not in shared:
            shared.append(earlier)
        parts.append(part)
    return parts, shared


def cmd_stats(args: argparse.Namespace) -> int:
    from damo_lit.cli.common import compose, user_errors
    from damo_lit.data.schema import RecordError

    with user_errors("damo-data stats"):
        cfg = compose("data_stats", args.overrides)
    try:
        stats = collect_stats(cfg.data)
    except (RecordError, FileNotFoundError, ValueError) as err:
        print(f"damo-data stats: {err}", file=sys.stderr)
        return 1
    print(f"data: {stats['data']}")
    for split, counts in stats["splits"].items():
        shared = counts.get("shares_file_with")
        note = f" (shares a file with {', '.join(shared)}: counted once in the totals)" if shared else ""
        print(f"  {split:>5}: {counts['samples']} samples over {counts['videos']} videos{note}")
    for split, path in stats["splits_missing"].items():
        print(f"  {split:>5}: no annotation file ({path} is not there)")
    print("  tasks: " + ", ".join(f"{k} {v}" for k, v in stats["tasks"].items()))
    print("  modalities: " + ", ".join(f"{k} {v}" for k, v in stats["modalities"].items()))
    if len(stats["sources"]) > 1:
        print("  sources: " + ", ".join(f"{k} {v}" for k, v in stats["sources"].items()))
    print(f"  videos: {stats['videos']} ({stats['videos_missing']} not found under data.video_dir"
          + (f", e.g. {stats['missing_examples'][0]}" if stats["missing_examples"] else "") + ")")
    done = {k: v for k, v in stats["fixes"].items() if v}
    print("  fix-ups: " + (", ".join(f"{k} {v}" for k, v in done.items()) or "none") + " (every kind: see the JSON)")
    print(json.dumps({k: v for k, v in stats.items() if k != "missing_examples"}))
    if not stats["samples"]:
        print("damo-data stats: no sample kept: every record was dropped (the fix-ups say why) or the "
              "annotation files hold none", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"synth": cmd_synth, "validate": cmd_validate, "stats": cmd_stats}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
