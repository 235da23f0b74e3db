"""QVHighlights: the official evaluator's numbers from the shared sample, and its definitions by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from damo_lit.metrics import QVHighlightsError, QVHighlightsMetrics, QVHPrediction, QVHTarget, evaluate_qvhighlights
from damo_lit.metrics.qvhighlights import detection_ap, saliency_ap, top1_iou, voc_interpolated_ap
from damo_lit.metrics.spans import temporal_iou

from .helpers import assert_same_tree


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def qvh_files(shared_data):
    root = shared_data / "qvhighlights"
    return load(root / "sample_val_preds.jsonl"), load(root / "highlight_val_release.jsonl"), json.loads(
        (root / "sample_val_preds_metrics_raw.json").read_text()
    )


def test_reproduces_official_numbers(qvh_files):
    submission, ground_truth, official = qvh_files
    assert len(ground_truth) == 1550
    result = evaluate_qvhighlights(
        [QVHPrediction.from_dict(d) for d in submission], [QVHTarget.from_dict(d) for d in ground_truth]
    )
    assert_same_tree(result, official)
    assert list(result) == list(official)  # same order of parts, 'brief' first
    assert list(result["brief"]) == list(official["brief"])


def test_metric_in_batches_with_repeats_matches_direct(qvh_files):
    submission, ground_truth, _ = qvh_files
    by_qid = {d["qid"]: d for d in ground_truth}
    preds = submission[:240]
    targets = [by_qid[d["qid"]] for d in preds]
    metric = QVHighlightsMetrics()
    for lo in range(0, 240, 64):
        metric.update(preds[lo : lo + 64], targets[lo : lo + 64])
    metric.update(preds[:3], targets[:3])  # DistributedSampler-style repeats count once
    direct = evaluate_qvhighlights([QVHPrediction.from_dict(d) for d in preds], [QVHTarget.from_dict(d) for d in targets])
    assert metric.compute() == direct


def test_voc_ap_and_detection_ap_by_hand():
    # precision 1 then 0.5 at recall 0.5 then 1: area 0.5 * 1 + 0.5 * 0.5
    assert voc_interpolated_ap(np.array([1.0, 0.5]), np.array([0.5, 1.0])) == pytest.approx(0.75)
    gt = np.array([[0.0, 10.0]])
    # best-scored window hits, the second duplicates it: a false positive after full recall -> AP 1
    assert detection_ap(gt, np.array([[0, 10, 0.9], [0, 10, 0.5]]), (0.5,))[0] == pytest.approx(1.0)
    # the best-scored window misses, the second hits: precision 1/2 at recall 1 -> AP 0.5
    assert detection_ap(gt, np.array([[20, 30, 0.9], [0, 10, 0.5]]), (0.5,))[0] == pytest.approx(0.5)
    # IoU 0.6 is a hit at 0.5 but not at 0.7
    assert detection_ap(gt, np.array([[0, 6, 1.0]]), (0.5, 0.7)).tolist() == [1.0, 0.0]
    two_gts = np.array([[0.0, 10.0], [20.0, 30.0]])
    # one of two windows found: recall 0.5 at precision 1 -> AP 0.5
    assert detection_ap(two_gts, np.array([[0, 10, 1.0]]), (0.5,))[0] == pytest.approx(0.5)
    assert detection_ap(gt, np.zeros((0, 3)), (0.5,))[0] == 0.0


def test_top1_iou_uses_the_best_matching_window():
    gts = np.array([[0.0, 4.0], [10.0, 14.0]])
    assert top1_iou(gts, np.array([[11.0, 14.0, 0.9], [0.0, 4.0, 0.1]])) == pytest.approx(0.75)


def test_saliency_ap_by_hand():
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    # ranks: hit, miss, hit, miss -> precision 1 at recall 0.5, 2/3 at recall 1
    assert saliency_ap(labels, np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx((1 + 2 / 3) / 2)
    # interpolation: precision 1/2 at recall 1/2 is lifted to 2/3 (reached at recall 1)
    assert saliency_ap(labels, np.array([0.8, 0.9, 0.7, 0.1])) == pytest.approx(2 / 3)
    assert saliency_ap(np.zeros(4), np.arange(4.0)) == 0.0
    assert saliency_ap(np.ones(4), np.arange(4.0)) == 1.0
    # tied scores form one threshold: precision 2/4 at recall 1
    assert saliency_ap(labels, np.zeros(4)) == pytest.approx(0.5)


def _query(qid, windows, clip_ids, saliency, duration=20):
    return {"qid": qid, "duration": duration, "relevant_windows": windows, "relevant_clip_ids": clip_ids,
            "saliency_scores": saliency}


def test_small_submission_by_hand():
    targets = [
        _query(1, [[0, 4]], [0, 1], [[4, 4, 4], [2, 1, 0]]),  # a short (<= 10 s) window
        _query(2, [[2, 22]], [1, 2, 3], [[1, 1, 1], [0, 0, 4], [3, 3, 3]], duration=30),  # middle
    ]
    preds = [
        {"qid": 1, "pred_relevant_windows": [[0, 4, 0.9]], "pred_saliency_scores": [0.9, 0.1] + [0.0] * 8},
        {"qid": 2, "pred_relevant_windows": [[12, 22, 0.8], [2, 22, 0.1]], "pred_saliency_scores": [0.5, 0.2, 0.9]},
    ]
    out = evaluate_qvhighlights([QVHPrediction.from_dict(p) for p in preds], [QVHTarget.from_dict(t) for t in targets])
    full = out["full"]
    # query 1: IoU 1; query 2: top-1 IoU 10/20 = 0.5 -> hit at 0.5 only
    assert full["MR-R1"]["0.5"] == 100.0 and full["MR-R1"]["0.55"] == 50.0
    # query 2 AP: at 0.5 the first window hits (AP 1); above, it misses and the second hits (AP 0.5)
    assert full["MR-mAP"]["0.5"] == 100.0 and full["MR-mAP"]["0.55"] == 75.0
    assert out["short"]["MR-R1"]["0.5"] == 100.0 and out["middle"]["MR-R1"]["0.55"] == 0.0
    assert math.isnan(out["long"]["MR-mAP"]["average"]) and math.isnan(out["long"]["MR-R1"]["0.5"])  # no long query
    # query 1's top clip 0 scores (4, 4, 4); query 2's top clip 2 scores (0, 0, 4): a hit for one annotator
    # is a hit (max over annotators), at every level up to VeryGood (>= 4)
    assert out["HL-min-VeryGood"]["HL-Hit1"] == 100.0 and out["HL-min-Fair"]["HL-Hit1"] == 100.0
    # query 2 at VeryGood: annotators 1 and 2 have no positive clip (AP 0), annotator 3's only positive
    # clip is ranked first (AP 1); query 1: clip 0 is positive for all three and ranked first (AP 1)
    assert out["HL-min-VeryGood"]["HL-mAP"] == pytest.approx(100 * (3 + 1) / 6, abs=0.01)
    assert set(out["brief"]) >= {"MR-full-R1@0.5", "MR-full-mAP", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"}


def test_mismatched_queries_and_bad_input_raise():
    target = QVHTarget.from_dict(_query(1, [[0, 4]], [0], [[1, 2, 3]]))
    pred = QVHPrediction.from_dict({"qid": 2, "pred_relevant_windows": [[0, 4, 1.0]]})
    with pytest.raises(QVHighlightsError, match="different queries"):
        evaluate_qvhighlights([pred], [target])
    with pytest.raises(QVHighlightsError, match="no query has both"):
        evaluate_qvhighlights([pred], [target], match_number=False)
    with pytest.raises(QVHighlightsError, match="needs 3 numbers"):
        QVHPrediction.from_dict({"qid": 1, "pred_relevant_windows": [[0, 4]]}, "f.jsonl:7")
    with pytest.raises(QVHighlightsError, match="f.jsonl:3: 2 relevant_clip_ids but 1 rows"):
        QVHTarget.from_dict(_query(1, [[0, 4]], [0, 1], [[1, 2, 3]]), "f.jsonl:3")
    outside = QVHTarget.from_dict(_query(1, [[0, 4]], [40], [[1, 2, 3]]))
    with pytest.raises(QVHighlightsError, match="fall outside the 10 clips"):
        evaluate_qvhighlights([QVHPrediction.from_dict({"qid": 1, "pred_saliency_scores": [1.0]})], [outside])


@pytest.mark.parametrize("window, reason", [
    ([68, 0, 1.0], "it ends before it starts"),
    ([float("nan"), 5, 1.0], "a bound is not a finite number"),
    ([0, float("inf"), 1.0], "a bound is not a finite number"),
])
def test_a_window_without_a_length_is_an_input_error_naming_line_and_qid(window, reason):
    """A reversed window would have no union with a ground-truth one: an undefined IoU that the
    official matching counts as a hit at every threshold (MR-full-mAP 100 for [[68, 0]])."""
    obj = {"qid": 2579, "pred_relevant_windows": [[0, 70, 0.9], window]}
    with pytest.raises(QVHighlightsError, match=rf"^p\.jsonl:4: qid 2579: 'pred_relevant_windows'\[1\] is .*: {reason}"):
        QVHPrediction.from_dict(obj, "p.jsonl:4")
    with pytest.raises(QVHighlightsError, match=rf"^g\.jsonl:2: qid 7: 'relevant_windows'\[0\] is .*: {reason}"):
        QVHTarget.from_dict(_query(7, [window[:2]], [0], [[1, 2, 3]]), "g.jsonl:2")
    # an empty window in time order stays a window: it just overlaps nothing
    assert QVHPrediction.from_dict({"qid": 1, "pred_relevant_windows": [[4, 4, 1.0]]}).windows.shape == (1, 3)


def test_a_window_pair_without_a_union_has_iou_zero_not_nan():
    """NaN fails every `iou < threshold` test, so a NaN IoU would be a hit at every threshold."""
    iou = temporal_iou(np.array([[5.0, 5.0], [68.0, 0.0], [0.0, 4.0]]), np.array([[5.0, 5.0], [0.0, 68.0]]))
    assert not np.isnan(iou).any()
    assert iou[0].tolist() == [0.0, 0.0] and iou[1].tolist() == [0.0, 0.0] and iou[2, 1] == pytest.approx(4 / 68)
    assert detection_ap(np.array([[5.0, 5.0]]), np.array([[5.0, 5.0, 1.0]]), (0.5, 0.95)).tolist() == [0.0, 0.0]


def test_qids_of_another_type_are_named_as_such():
    """The official evaluator compares qids as json reads them, so '10003' is not 10003; the error
    says that the types differ instead of listing the same ids as both missing and extra."""
    targets = [QVHTarget.from_dict(_query(q, [[0, 4]], [0], [[1, 2, 3]])) for q in (10003, 10004)]
    preds = [QVHPrediction.from_dict({"qid": str(q), "pred_relevant_windows": [[0, 4, 1.0]]}) for q in (10003, 10004)]
    note = ("the qids differ in type: 2 predicted qids are strings where the ground truth has integers "
            "(e.g. '10003' against 10003); qids are compared by value and type, as the official evaluator "
            "compares them: write them as integers, as the ground truth does")
    with pytest.raises(QVHighlightsError) as info:
        evaluate_qvhighlights(preds, targets)
    assert str(info.value) == note
    with pytest.raises(QVHighlightsError) as info:
        evaluate_qvhighlights(preds, targets, match_number=False)
    assert str(info.value) == f"no query has both a prediction and an annotation: {note}"
    with pytest.raises(QVHighlightsError, match="different queries") as info:  # other ids: the usual message
        evaluate_qvhighlights(preds[:1], [QVHTarget.from_dict(_query(5, [[0, 4]], [0], [[1, 2, 3]]))])
    assert "type" not in str(info.value)


@pytest.mark.parametrize("change, message", [
    ({"duration": "NaN"}, r"g\.jsonl:2: 'duration' must be a number, got 'NaN'"),
    ({"duration": float("nan")}, r"g\.jsonl:2: 'duration' must be a finite number"),
    ({"duration": -5}, r"g\.jsonl:2: 'duration' must be > 0 seconds, got -5"),
    ({"relevant_clip_ids": "abc"}, r"g\.jsonl:2: 'relevant_clip_ids' must be a list of clip indices"),
    ({"relevant_clip_ids": [1.7]}, r"g\.jsonl:2: 'relevant_clip_ids'\[0\] must be a whole number"),
    ({"saliency_scores": [[1, float("nan"), 3]]}, r"'saliency_scores'\[0\] holds a score that is not a finite number"),
    ({"relevant_windows": [["1", 4]]}, r"'relevant_windows'\[0\] must hold numbers"),
])
def test_ground_truth_of_the_wrong_kind_is_an_error_naming_its_line(change, message):
    with pytest.raises(QVHighlightsError, match=message):
        QVHTarget.from_dict({**_query(7, [[0, 4]], [0], [[1, 2, 3]]), **change}, "g.jsonl:2")


@pytest.mark.parametrize("change, message", [
    ({"pred_saliency_scores": [1.0, float("nan")]}, r"'pred_saliency_scores'\[1\] must be a finite number"),
    ({"pred_saliency_scores": 5}, r"'pred_saliency_scores' must be a list of numbers"),
    ({"pred_saliency_scores": ["1"]}, r"'pred_saliency_scores'\[0\] must be a number"),
    ({"pred_relevant_windows": [[True, 2, 3]]}, r"'pred_relevant_windows'\[0\] must hold numbers"),
    ({"pred_relevant_windows": [["1", "2", "3"]]}, r"'pred_relevant_windows'\[0\] must hold numbers"),
    ({"pred_relevant_windows": [[1, 2, float("nan")]]}, r"'pred_relevant_windows'\[0\] holds a score that is not"),
])
def test_predictions_of_the_wrong_kind_are_errors_naming_their_line(change, message):
    """NaN clip scores once raised HL-mAP (44.01 against 24.78 for zeros): the official sklearn call refuses them."""
    with pytest.raises(QVHighlightsError, match=rf"^p\.jsonl:4: qid 1: {message}"):
        QVHPrediction.from_dict({"qid": 1, **change}, "p.jsonl:4")


def test_a_video_shorter_than_one_clip_is_named_when_highlights_are_scored():
    short = QVHTarget.from_dict({**_query(7, [[0, 1]], [], []), "duration": 1})
    moments = QVHPrediction.from_dict({"qid": 7, "pred_relevant_windows": [[0, 1, 1.0]]})
    assert evaluate_qvhighlights([moments], [short])["brief"]["MR-full-R1@0.5"] == 100.0  # moments alone: fine
    with pytest.raises(QVHighlightsError, match=r"qid 7: a 1.0 s video holds no 2-second clip"):
        evaluate_qvhighlights([QVHPrediction.from_dict({"qid": 7, "pred_saliency_scores": [1.0]})], [short])
