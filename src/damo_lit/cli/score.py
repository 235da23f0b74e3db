"""damo-score: score a predictions file against ground truth and print one JSON object.

Three tasks share one shape of command (`damo-score TASK --pred P --gt G [--out F]`):
grounding (R@IoU / mIoU over damo-eval output or DaMO JSONL), qvhighlights (the official
Moment-DETR evaluation, on the official files as they are) and retrieval (R@k and ranks from a
similarity matrix or ranked lists). The JSON goes to stdout, and to --out when given; progress
and errors go to stderr. Malformed input stops with an error that names file:line.
File formats: docs/metrics.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from damo_lit.cli.common import unwritable_reason
from damo_lit.data.schema import EVALUATED_BY_SPAN, Record, RecordError, json_lines
from damo_lit.files import not_a_file
from damo_lit.metrics.grounding import DEFAULT_THRESHOLDS, GroundingScorer
from damo_lit.metrics.qvhighlights import (
    LENGTH_RANGES,
    SALIENCY_LEVELS,
    QVHighlightsError,
    QVHPrediction,
    QVHTarget,
    evaluate_qvhighlights,
)
from damo_lit.metrics.retrieval import DEFAULT_KS, paired_retrieval_metrics, ranked_list_metrics, retrieval_metrics
from damo_lit.metrics.spans import Span, clean_span

MAX_LISTED_IDS = 20
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE: stdout closed by its reader (`damo-score ... | head`)


class ScoreInputError(ValueError):
    """Input damo-score cannot read; the message starts with file:line (or the file)."""


# ---------------------------------------------------------------- reading JSON lines
def read_json_lines(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ('file:line', object) for every non-blank line; a line that is not a JSON object raises."""
    path = Path(path)
    if (problem := not_a_file(path)) is not None:
        raise ScoreInputError(f"{path}: {problem}")
    for _, where, obj in json_lines(path):
        if isinstance(obj, RecordError):
            raise ScoreInputError(str(obj))
        if not isinstance(obj, dict):
            raise ScoreInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def _id(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise ScoreInputError(f"{where}: missing required key '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ScoreInputError(f"{where}: '{key}' must be a non-empty string or an integer, got {value!r}")
    return str(value)


def _unique(items: dict[str, Any], key: str, where: str, seen_at: dict[str, str]) -> None:
    if key in items:
        raise ScoreInputError(f"{where}: id {key!r} appears again (first at {seen_at[key]})")
    seen_at[key] = where


# ---------------------------------------------------------------- grounding
@dataclass(frozen=True)
class GroundingTruth:
    """The ground truth of one grounding query: every span it accepts, and the modality it needs."""

    id: str
    spans: tuple[Span, ...]
    modality: str | None
    where: str


def _span_list(value: Any, key: str, where: str) -> list[Any]:
    """A JSON list of [start, end] pairs (None means an empty list); only the structure is checked."""
    if value is None:
        return []
    if not isinstance(value, list) or any(not isinstance(s, (list, tuple)) for s in value):
        raise ScoreInputError(f"{where}: '{key}' must be a list of [start, end] pairs in seconds, got {value!r}")
    return value


def read_grounding_predictions(path: str | Path) -> dict[str, Span | None]:
    """id -> top-1 predicted span (None: nothing usable) from damo-eval output or DaMO records.

    A line with 'pred_spans' is damo-eval output (its first span is the answer); otherwise a
    DaMO record whose 'spans' are the predictions. Unusable spans (NaN, zero length) are kept as
    None and score IoU 0; a line whose spans are not a list of pairs is an error.
    """
    preds: dict[str, Span | None] = {}
    seen_at: dict[str, str] = {}
    for where, obj in read_json_lines(path):
        qid = _id(obj, "id", where)
        if "pred_spans" in obj:
            spans = _span_list(obj["pred_spans"], "pred_spans", where)
        elif "spans" in obj:
            spans = _span_list(obj["spans"], "spans", where)
        else:
            raise ScoreInputError(
                f"{where}: a prediction line needs 'pred_spans' (damo-eval output) or 'spans' (a DaMO record)"
            )
        _unique(preds, qid, where, seen_at)
        preds[qid] = clean_span(spans[0]) if spans else None
    return preds


def _in_time_order(span: Any) -> Any:
    """A usable window in time order (`clean_span`'s rule, as for predictions); anything else is left
    as it is, for the schema to name."""
    window = clean_span(span)
    return list(window) if window is not None else span


def _ordered_record(obj: dict[str, Any]) -> dict[str, Any]:
    """A DaMO record with its 'spans' in time order: a window may come in either order here (as in
    every other grounding input), while the schema refuses a reversed one."""
    spans = obj.get("spans")
    return {**obj, "spans": [_in_time_order(s) for s in spans]} if isinstance(spans, list) else obj


def read_grounding_truth(path: str | Path, scorer: GroundingScorer) -> tuple[dict[str, GroundingTruth], int]:
    """(id -> GroundingTruth, number of records skipped, not scored by span) from DaMO JSONL or eval output.

    A line with 'gt_spans' is damo-eval output; any other line must be a valid DaMO record
    (src/damo_lit/data/schema.py) once its spans are put in time order, and only 'grounding' and
    'dialogue' records are scored, against the spans their final answer refers to, as damo-eval
    scores them. A ground-truth window of zero length, or outside the video (eval output gives
    its `duration`), is an error naming file:line (a query needs a real window to be scored
    against). The modality must be one that `scorer` knows.
    """
    truth: dict[str, GroundingTruth] = {}
    seen_at: dict[str, str] = {}
    skipped = 0
    for where, obj in read_json_lines(path):
        if "gt_spans" in obj:
            qid = _id(obj, "id", where)
            raw = _span_list(obj["gt_spans"], "gt_spans", where)
            spans = [clean_span(s) for s in raw]
            if not spans or any(s is None for s in spans):
                raise ScoreInputError(f"{where}: 'gt_spans' must hold at least one [start, end] with end > start, got {raw!r}")
            duration = obj.get("duration")
            if isinstance(duration, (int, float)) and not isinstance(duration, bool):
                outside = [list(s) for s in spans if s[0] < 0 or s[1] > duration + 1e-6]
                if outside:
                    raise ScoreInputError(f"{where}: 'gt_spans' {outside} lie outside the video (0 to {duration} s)")
            modality = obj.get("modality")
        else:
            try:
                record = Record.from_dict(_ordered_record(obj), where)
            except RecordError as err:
                raise ScoreInputError(str(err)) from None
            if record.task not in EVALUATED_BY_SPAN:
                skipped += 1
                continue
            qid, spans, modality = record.id, list(record.answer_spans), record.modality
        try:
            scorer.modality_index(modality)
        except ValueError as err:
            raise ScoreInputError(f"{where}: {err}") from None
        _unique(truth, qid, where, seen_at)
        truth[qid] = GroundingTruth(qid, tuple(spans), modality, where)
    if not truth:
        raise ScoreInputError(f"{path}: no grounding or dialogue records in the ground truth ({skipped} other "
                              "records skipped: captions and QA have no span to score)")
    return truth, skipped


def _plain(value: Any, key: str) -> float | int:
    """A metric value as JSON likes it: counts ('count', 'count_audio', 't2v_count') as ints."""
    number = float(value)
    if key.endswith("count") or key.startswith("count_"):
        return int(round(number))
    return round(number, 6)


def score_grounding(pred_path: str | Path, gt_path: str | Path, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Grounding figures of a predictions file against ground truth (a missing prediction is a miss).
    Files without one shared id are an error: the all-zero figures they would give are a mix-up
    of files (another split's predictions, an empty file), not a model's score."""
    scorer = GroundingScorer(tuple(thresholds))
    truth, skipped = read_grounding_truth(gt_path, scorer)
    preds = read_grounding_predictions(pred_path)
    ids = list(truth)
    if not preds.keys() & truth.keys():
        example = f"e.g. {next(iter(preds))!r}" if preds else "the file holds none"
        raise ScoreInputError(
            f"{pred_path}: no prediction id matches any ground-truth id of {gt_path} (predictions: {example}; "
            f"ground truth: e.g. {ids[0]!r}); are they of the same split and data set?"
        )
    missing = [qid for qid in ids if qid not in preds]
    extra = [qid for qid in preds if qid not in truth]
    scores = scorer.score_queries(
        [preds.get(qid) for qid in ids], [truth[qid].spans for qid in ids], [truth[qid].modality for qid in ids]
    )
    out: dict[str, Any] = {key: _plain(value, key) for key, value in scorer.summarize(scores).items()}
    out["missing"] = len(missing)
    if missing:
        out["missing_ids"] = missing[:MAX_LISTED_IDS]
    out["extra"] = len(extra)
    out["skipped_unscored"] = skipped
    return out


# ---------------------------------------------------------------- QVHighlights
def _read_qvh(path: str | Path, build: Callable[[dict[str, Any], str], Any]) -> list[Any]:
    items, seen_at = [], {}
    for where, obj in read_json_lines(path):
        try:
            item = build(obj, where)
        except QVHighlightsError as err:
            raise ScoreInputError(str(err)) from None
        if item.qid in seen_at:
            raise ScoreInputError(f"{where}: qid {item.qid!r} appears again (first at {seen_at[item.qid]})")
        seen_at[item.qid] = where
        items.append(item)
    if not items:
        raise ScoreInputError(f"{path}: no queries in the file")
    return items


def score_qvhighlights(pred_path: str | Path, gt_path: str | Path, match_number: bool = True,
                       partial_hint: str = "match_number=False") -> dict[str, Any]:
    """The official QVHighlights evaluation ('brief' + nested figures) of a submission file.
    `partial_hint`: what the error over unequal query sets tells the caller to use instead."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    preds = _read_qvh(pred_path, QVHPrediction.from_dict)
    targets = _read_qvh(gt_path, QVHTarget.from_dict)
    parts = (len(LENGTH_RANGES) if preds[0].windows is not None else 0) + (
        len(SALIENCY_LEVELS) if preds[0].saliency is not None else 0
    )
    shared = len({p.qid for p in preds} & {t.qid for t in targets})
    columns = (TextColumn("scoring QVHighlights"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("score", total=parts * shared)
        try:
            return dict(evaluate_qvhighlights(preds, targets, match_number, lambda: progress.advance(task),
                                              partial_hint=partial_hint))
        except QVHighlightsError as err:
            raise ScoreInputError(f"{pred_path} against {gt_path}: {err}") from None


# ---------------------------------------------------------------- retrieval
@dataclass(frozen=True)
class Similarity:
    """A similarity matrix (queries x candidates) and, when the file names them, the ids of both."""

    sim: np.ndarray
    query_ids: list[str] | None
    candidate_ids: list[str] | None


def _ids(value: Any, expected: int, what: str, where: str) -> list[str] | None:
    if value is None:
        return None
    ids = [str(v) for v in np.asarray(value).reshape(-1).tolist()]
    if len(ids) != expected:
        raise ScoreInputError(f"{where}: '{what}' has {len(ids)} ids but the matrix has {expected}")
    if len(set(ids)) != len(ids):
        raise ScoreInputError(f"{where}: '{what}' repeats ids")
    return ids


def read_similarity(path: str | Path) -> Similarity:
    """A similarity matrix from .npy, .npz (key 'sim', optional 'query_ids', 'candidate_ids') or .json
    ({"sim": [[...]], "query_ids": [...], "candidate_ids": [...]})."""
    path = Path(path)
    if (problem := not_a_file(path)) is not None:
        raise ScoreInputError(f"{path}: {problem}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data: dict[str, Any] = {"sim": np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                data = {key: npz[key] for key in npz.files}
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise ScoreInputError(f"{path}: cannot read a similarity matrix ({err})") from None
    if not isinstance(data, dict) or "sim" not in data:
        raise ScoreInputError(f"{path}: expected a similarity matrix under the key 'sim'")
    try:
        sim = np.asarray(data["sim"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ScoreInputError(f"{path}: 'sim' must be a rectangular matrix of numbers") from None
    if sim.ndim != 2 or sim.size == 0:
        raise ScoreInputError(f"{path}: 'sim' must be a non-empty 2-D matrix (queries x candidates), got shape {sim.shape}")
    return Similarity(
        sim,
        _ids(data.get("query_ids"), sim.shape[0], "query_ids", str(path)),
        _ids(data.get("candidate_ids"), sim.shape[1], "candidate_ids", str(path)),
    )


def read_gold(path: str | Path) -> dict[str, list[str]]:
    """query id -> gold candidate ids, from JSONL lines {"query", "gold"} or a JSON object {query: gold}."""
    path = Path(path)
    gold: dict[str, list[str]] = {}
    seen_at: dict[str, str] = {}

    def add(query: str, value: Any, where: str) -> None:
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, (dict, list, bool)) or v is None for v in values):
            raise ScoreInputError(f"{where}: 'gold' must be a candidate id or a non-empty list of ids, got {value!r}")
        _unique(gold, query, where, seen_at)
        gold[query] = [str(v) for v in values]

    if path.suffix.lower() == ".json":
        if (problem := not_a_file(path)) is not None:
            raise ScoreInputError(f"{path}: {problem}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ScoreInputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(data, dict):
            raise ScoreInputError(f"{path}: expected an object {{query id: gold id or [ids]}}")
        for query, value in data.items():
            add(str(query), value, f"{path} [{query!r}]")
    else:
        for where, obj in read_json_lines(path):
            if "gold" not in obj:
                raise ScoreInputError(f"{where}: missing required key 'gold'")
            add(_id(obj, "query", where), obj["gold"], where)
    if not gold:
        raise ScoreInputError(f"{path}: no queries in the gold file")
    return gold


def _matrix_gold(similarity: Similarity, gold: dict[str, list[str]], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the matrix named by the gold file, and their (rows x candidates) gold mask."""
    num_q, num_c = similarity.sim.shape
    query_ids = similarity.query_ids or [str(i) for i in range(num_q)]
    candidate_ids = similarity.candidate_ids or [str(i) for i in range(num_c)]
    row_of = {qid: i for i, qid in enumerate(query_ids)}
    col_of = {cid: j for j, cid in enumerate(candidate_ids)}
    rows, mask = [], np.zeros((len(gold), num_c), dtype=bool)
    for k, (query, golds) in enumerate(gold.items()):
        if query not in row_of:
            raise ScoreInputError(f"{where}: query {query!r} is not a row of the similarity matrix")
        for cand in golds:
            if cand not in col_of:
                raise ScoreInputError(f"{where}: gold candidate {cand!r} of query {query!r} is not a column of the matrix")
            mask[k, col_of[cand]] = True
        rows.append(row_of[query])
    return np.asarray(rows, dtype=np.int64), mask


def read_ranked_lists(path: str | Path) -> dict[str, list[str]]:
    """query id -> candidate ids best first, from JSONL lines {"query": id, "ranked": [ids]}."""
    ranked: dict[str, list[str]] = {}
    seen_at: dict[str, str] = {}
    for where, obj in read_json_lines(path):
        query = _id(obj, "query", where)
        value = obj.get("ranked")
        if not isinstance(value, list) or any(isinstance(v, (dict, list)) or v is None for v in value):
            raise ScoreInputError(f"{where}: 'ranked' must be a list of candidate ids, best first")
        _unique(ranked, query, where, seen_at)
        ranked[query] = [str(v) for v in value]
    if not ranked:
        raise ScoreInputError(f"{path}: no ranked lists in the file")
    return ranked


def score_retrieval(pred_path: str | Path, gt_path: str | Path | None, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Retrieval figures: both directions of a paired square matrix (no --gt), else query -> candidate."""
    pred_path = Path(pred_path)
    if pred_path.suffix.lower() == ".jsonl":
        if gt_path is None:
            raise ScoreInputError(f"{pred_path}: ranked lists need --gt with each query's gold candidate(s)")
        ranked, gold = read_ranked_lists(pred_path), read_gold(gt_path)
        missing = [q for q in gold if q not in ranked]
        if missing:
            raise ScoreInputError(f"{pred_path}: no ranked list for {len(missing)} gold queries (e.g. {missing[:5]})")
        out: dict[str, Any] = ranked_list_metrics([ranked[q] for q in gold], list(gold.values()), ks)
        out["unscored"] = len(set(ranked) - set(gold))
    else:
        similarity = read_similarity(pred_path)
        if gt_path is None:
            if similarity.sim.shape[0] != similarity.sim.shape[1]:
                raise ScoreInputError(
                    f"{pred_path}: without --gt the matrix must be square with pairs on the diagonal, "
                    f"got {similarity.sim.shape[0]} x {similarity.sim.shape[1]}"
                )
            out = paired_retrieval_metrics(similarity.sim, ks)
        else:
            rows, mask = _matrix_gold(similarity, read_gold(gt_path), str(gt_path))
            out = retrieval_metrics(similarity.sim[rows], mask, ks)
            out["unscored"] = similarity.sim.shape[0] - len(rows)
    return {key: _plain(value, key) if isinstance(value, float) else value for key, value in out.items()}


# ---------------------------------------------------------------- command line
EPILOG = """examples:
  damo-score grounding --pred outputs/demo/stage3/eval/synthetic_test/predictions.jsonl \
      --gt outputs/data/synthetic/annotations/test.jsonl
      (damo-eval ckpt=CKPT data=D split=S writes CKPT/eval/D_S/predictions.jsonl)
  damo-score qvhighlights --pred sample_val_preds.jsonl --gt highlight_val_release.jsonl --out metrics.json
  damo-score retrieval --pred msrvtt_sim.npz
File formats: docs/metrics.md."""


def cut_off(word: str) -> int:
    """A --ks value: a whole number of candidates, at least 1 (R@0 would be 0 for every query)."""
    try:
        k = int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{word!r} is not a whole number") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"{k}: a cut-off k of R@k must be at least 1 (the top k candidates)")
    return k


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="damo-score",
        description="Score a predictions file against ground truth and print one JSON object "
        "(also written to --out). Errors name the file and line that was wrong.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="{grounding,qvhighlights,retrieval}")

    def add(name: str, help_text: str, description: str, gt_help: str, gt_required: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--pred", required=True, type=Path, metavar="P", help="the predictions file")
        p.add_argument("--gt", required=gt_required, type=Path, metavar="G", help=gt_help)
        p.add_argument("--out", type=Path, metavar="F", help="also write the JSON object to this file")
        return p

    grounding = add(
        "grounding",
        "temporal grounding: R@0.3/0.5/0.7, mIoU, parse rate, per modality",
        "Temporal grounding: the top-1 predicted span of each query against its ground-truth span(s).\n"
        "--pred: JSONL, damo-eval output lines {id, pred_spans: [[s, e], ...] best first} or DaMO\n"
        "records whose 'spans' are the predictions. --gt: DaMO JSONL (grounding records; others are\n"
        "skipped) or damo-eval output lines with 'gt_spans' (the same file as --pred works).\n"
        "A ground-truth id with no prediction counts as a miss and is reported under 'missing'.\n"
        "Rates are fractions in [0, 1].",
        "ground truth: DaMO JSONL, or damo-eval output with 'gt_spans'",
    )
    grounding.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS), metavar="T",
                           help="IoU thresholds for R@T (default: 0.3 0.5 0.7)")
    qvh = add(
        "qvhighlights",
        "QVHighlights moment retrieval + highlight detection (official evaluator's numbers)",
        "QVHighlights: the Moment-DETR standalone evaluation (MR R1 and mAP at IoU 0.5:0.05:0.95,\n"
        "short/middle/long splits, HL mAP and Hit@1 at Fair/Good/VeryGood), on the official files\n"
        "as they are: --pred lines {qid, pred_relevant_windows: [[s, e, score], ...],\n"
        "pred_saliency_scores: [...]}, --gt lines of highlight_{val,test}_release.jsonl.\n"
        "Prints {'brief': {...}, 'HL-min-Fair': ..., 'full': ..., ...} with percentages.",
        "the official annotation file (highlight_val_release.jsonl)",
    )
    qvh.add_argument("--allow-partial", action="store_true",
                     help="score only the queries in both files (the official script demands equal sets)")
    retrieval = add(
        "retrieval",
        "text-video retrieval: R@1/5/10, median and mean rank",
        "Retrieval. --pred is either a similarity matrix (.npy, .npz with 'sim' and optional\n"
        "'query_ids'/'candidate_ids', or .json {\"sim\": [[...]], ...}; rows are queries) or ranked\n"
        "lists (.jsonl lines {\"query\": id, \"ranked\": [candidate ids best first]}).\n"
        "Without --gt a square matrix is scored in both directions with pairs on the diagonal\n"
        "(t2v_*: rows as queries, v2t_*: columns). With --gt (JSONL {\"query\": id, \"gold\": id or\n"
        "[ids]}, or .json {query: gold}) each listed query is scored against its gold candidate(s).\n"
        "Ties rank pessimistically; rates are fractions in [0, 1]. A ranked list without its query's\n"
        "gold candidate misses every R@k (counted under gold_not_ranked); MdR and MnR are then lower\n"
        "bounds, reported as MdR_lower_bound and MnR_lower_bound.",
        "gold candidates per query (optional for a square paired matrix)",
        gt_required=False,
    )
    retrieval.add_argument("--ks", type=cut_off, nargs="+", default=list(DEFAULT_KS), metavar="K",
                           help="cut-offs for R@K (default: 1 5 10)")
    return parser


def json_safe(value: Any) -> Any:
    """NaN and infinities (a rate over no queries) as null, so that the output is strict JSON."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score as the parsed arguments ask; returns the JSON-ready result."""
    if args.task == "grounding":
        return score_grounding(args.pred, args.gt, args.thresholds)
    if args.task == "qvhighlights":
        return score_qvhighlights(args.pred, args.gt, match_number=not args.allow_partial,
                                  partial_hint="--allow-partial")
    return score_retrieval(args.pred, args.gt, args.ks)


def write_out(path: Path, text: str) -> None:
    """Write the JSON to --out (its folder made when missing); a path that cannot be written is a
    ScoreInputError naming it."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as err:
        raise ScoreInputError(f"--out {path}: cannot write it ({unwritable_reason(path.parent, err)})") from None


def print_to_stdout(text: str) -> bool:
    """Print `text`; False when stdout was closed under us (`damo-score ... | head`): then stdout
    is pointed at /dev/null, so that the interpreter's own flush at exit cannot raise again."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # no real file descriptor behind sys.stdout: nothing to flush at exit
            pass
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `damo-score`: one JSON object on stdout, exit status 2 on bad input.

    A reader that closes stdout early (`| head`) ends the command quietly with status 141 (128 +
    SIGPIPE, what the shell reports for a Unix tool stopped that way), after --out was written.
    """
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
        text = json.dumps(json_safe(result), indent=2, allow_nan=False)
        if args.out is not None:
            write_out(args.out, text)
    except (ScoreInputError, ValueError) as err:
        print(f"damo-score {args.task}: {err}", file=sys.stderr)
        return 2
    return 0 if print_to_stdout(text) else EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
