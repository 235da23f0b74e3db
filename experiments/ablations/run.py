"""make exp-ablations: what each part of DaMO is worth, one full damo-demo run per variant.

    python experiments/ablations/run.py [--quick] [--force] [--collect] [exp.only=[A,B]] [KEY=VALUE ...]
    make exp-ablations [KEY=VALUE ...]

Variants (folder names, for exp.only):
  full          the embedded default (damo_tiny, stages 1-4)
  no_audio      model.audio.enabled=false: no audio stream at all
  no_residual   model.residual.enabled=false: plain pooling instead of the global residual
  concat        model.fuseformer.kind=concat: the streams concatenated, no T-Fuseformer
  skip_stage1   demo.skip=[stage1]: no video-text alignment
  skip_stage3   demo.skip=[stage3]: no temporal perception stage (stage 4 straight after 2)

The audio check: on audio-only queries the no-audio model must do no better than the
constant-span baseline on the same queries + 0.05 (test/baseline_R@0.5_audio, else the overall
baseline). If it does better, the synthetic picture gives the audio answers away. The table has
the check per variant (the full model should fail it, by a wide margin) and a verdict below it.
The shuffle test (experiments/ablations/shuffle.py) then asks the question without a prior:
damo-eval runs the full and the no-audio model over the test grounding queries (once, into
RUN/eval_test/), and their answers on audio-only queries are handed to other audio-only queries;
only a model that reads the answer from the media loses R@0.5 by it. Figures in OUT/shuffle.json.

Leaves OUT/results.md, results.json and results.png (R@0.5 overall and per query modality, per
variant, with the baseline). OUT: outputs/experiments/ablations.
"""

from __future__ import annotations

import json

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments import common  # noqa: E402
from experiments.ablations import shuffle  # noqa: E402

NAME = "ablations"
VARIANTS = [
    common.Run("full", {"variant": "full model"}),
    common.Run("no_audio", {"variant": "no audio"}, ["model.audio.enabled=false"]),
    common.Run("no_residual", {"variant": "no global residual"}, ["model.residual.enabled=false"]),
    common.Run("concat", {"variant": "concat fusion"}, ["model.fuseformer.kind=concat"]),
    common.Run("skip_stage1", {"variant": "skip stage 1"}, ["demo.skip=[stage1]"]),
    common.Run("skip_stage3", {"variant": "skip stage 3"}, ["demo.skip=[stage3]"]),
]
MARGIN = 0.05
AUDIO_HEADER = f"audio R@0.5 ≤ baseline+{MARGIN:g}"


def audio_baseline(o: common.Outcome) -> float | None:
    """The constant-span baseline on audio-only queries (the overall one when that is absent)."""
    value = o.value("test/baseline_R@0.5_audio")
    return value if value is not None else o.value("test/baseline_R@0.5")


def audio_at_baseline(o: common.Outcome) -> bool | None:
    """Audio-only R@0.5 <= baseline + MARGIN; None without the figures."""
    audio, base = o.value("test/R@0.5_audio"), audio_baseline(o)
    return None if audio is None or base is None else audio <= base + MARGIN


def audio_cell(o: common.Outcome) -> str:
    verdict = audio_at_baseline(o)
    return "–" if verdict is None else ("yes" if verdict else "no")


BLIND_PRIORS = {"best": "one best relative span for every video", "duration": "the best span per video length"}


def blind_priors_audio() -> dict[str, float]:
    """R@0.5 on audio-only queries of the media-blind `best` and `duration` priors of make
    exp-priors, when it was run (empty otherwise)."""
    path = common.OUT_ROOT / "priors" / "results.json"
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    return {name: results[name]["R@0.5_audio"] for name in BLIND_PRIORS if "R@0.5_audio" in results.get(name, {})}


def verdict(outcomes: list[common.Outcome]) -> list[str]:
    """The sentences under the table: does the no-audio model fall to the baseline on audio queries?"""
    by_name = {o.run.name: o for o in outcomes}
    no_audio, full = by_name.get("no_audio"), by_name.get("full")
    if no_audio is None or audio_at_baseline(no_audio) is None:
        return ["Audio check: no figures for the no-audio model on audio-only queries."]
    audio, base = no_audio.value("test/R@0.5_audio"), audio_baseline(no_audio)
    holds = audio_at_baseline(no_audio)
    lines = [f"Audio check: the no-audio model's R@0.5 on audio-only queries is {common.fmt(audio)}, the "
             f"constant-span baseline on them {common.fmt(base)}: {common.fmt(audio)} "
             f"{'≤' if holds else '>'} {common.fmt(base)} + {MARGIN:g}, "
             + ("as it should be: the audio answers come from the audio stream."
                if holds else "NOT within the margin: the picture gives audio answers away, or the model "
                              "learned a media-blind prior (see below).")]  # fmt: skip
    priors = blind_priors_audio()
    if priors:
        reached = ", ".join(f"{common.fmt(v)} ({BLIND_PRIORS[k]})" for k, v in priors.items())
        lines.append(f"Span priors that see no media at all (make exp-priors, grounding test queries) reach {reached} "
                     "on audio-only queries: the constant-span baseline (the mean span) is not the best blind guess.")
    if full is not None and full.value("test/R@0.5_audio") is not None:
        lines.append(f"The full model reaches {common.fmt(full.value('test/R@0.5_audio'))} on the same queries.")
    return lines


SHUFFLED_RUNS = ("full", "no_audio")


def shuffle_tests(outcomes: list[common.Outcome], opts: common.Options) -> dict[str, shuffle.ShuffleResult]:
    """The shuffle test of the full and the no-audio run, where they finished (damo-eval when needed)."""
    results = {}
    for o in outcomes:
        if o.run.name not in SHUFFLED_RUNS or o.summary is None or o.final_stage is None:
            continue
        predictions = shuffle.predictions_of(common.stages_folder(o), o.final_stage, common.recorded_overrides(o),
                                             limit=16 if opts.quick else None, run=not opts.collect)  # fmt: skip
        result = None if predictions is None else shuffle.shuffle_test(shuffle.read_predictions(predictions))
        if result is not None:
            results[o.run.name] = result
    if results:
        (opts.out / "shuffle.json").parent.mkdir(parents=True, exist_ok=True)
        (opts.out / "shuffle.json").write_text(json.dumps(
            {name: {**vars(r), "drop": r.drop} for name, r in results.items()}, indent=2))  # fmt: skip
    return results


def shuffle_lines(results: dict[str, shuffle.ShuffleResult]) -> list[str]:
    """What the shuffle test says, under the table."""
    if not results:
        return []
    lines = [f"Shuffle test (damo-eval over the test grounding queries; each model's answers on audio-only "
             f"queries, as shares of the video's length, handed to other audio-only queries, "
             f"{shuffle.SHUFFLES} permutations):"]  # fmt: skip
    for name, r in results.items():
        lines.append(f"- {name}: R@0.5 {common.fmt(r.own)} with its own answers, {common.fmt(r.shuffled)} shuffled "
                     f"(95th percentile {common.fmt(r.shuffled_p95)}; {r.queries} queries)")  # fmt: skip
    no_audio = results.get("no_audio")
    if no_audio is not None:
        leaks = no_audio.own > no_audio.shuffled_p95
        lines.append("The no-audio model's audio answers "
                     + ("do better on their own videos than shuffled beyond chance: the picture says something "
                        "about the audio events (a leak to fix in the synthetic set)." if leaks else
                        "do no better on their own videos than on others' (within chance): it answers audio "
                        "queries from a prior, not from the picture, so the picture gives no audio answer away."))
    return lines


def plot(outcomes: list[common.Outcome], path: Path) -> Path:
    groups = {header: [o.value(key) for o in outcomes] for header, key in (
        ("R@0.5", "test/R@0.5"), ("R@0.5 audio", "test/R@0.5_audio"), ("R@0.5 visual", "test/R@0.5_visual"),
        ("R@0.5 audio-visual", "test/R@0.5_audio-visual"))}  # fmt: skip
    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    audio_limit = mean([audio_baseline(o) for o in outcomes])
    hlines = {"baseline R@0.5": mean([o.value("test/baseline_R@0.5") for o in outcomes]),
              f"audio check: audio baseline + {MARGIN:g}": None if audio_limit is None else audio_limit + MARGIN}
    return common.plot_bars(path, [str(o.run.label["variant"]) for o in outcomes], groups, ylabel="test R@0.5",
                            title="Ablations (damo_tiny, synthetic test split)", hlines=hlines)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    opts = common.parse_args(argv, NAME, __doc__)
    common.reject_sweeps(opts.extra, NAME)
    outcomes = common.run_all(VARIANTS, opts)
    columns = common.standard_columns(outcomes, [(AUDIO_HEADER, audio_cell)])
    notes = [*verdict(outcomes), *shuffle_lines(shuffle_tests(outcomes, opts))]
    markdown = common.write_results(outcomes, opts, "Ablations: test grounding without each part of DaMO",
                                    columns, notes)  # fmt: skip
    plot(outcomes, opts.out / "results.png")
    return common.finish(outcomes, opts, markdown)


if __name__ == "__main__":
    sys.exit(main())
