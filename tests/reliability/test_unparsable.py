"""Model text with no parsable span: evaluation goes on, the query counts as IoU 0 (a miss at every
threshold) and the parse rate says how many answers held a span. (The metric alone is tested in
tests/metrics/test_grounding_metrics.py, the span parser on garbage in tests/data/test_timestamps.py;
here the stage's test loop meets such text from the model.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from damo_lit.cli.common import compose_run
from damo_lit.cli.train import build_run
from damo_lit.stages.reporting import span_iou

from .helpers import run_overrides

# What a half-trained model says: nothing, words, numbers that are no span.
UNPARSABLE = ["", "around the middle, i do not know", "from nan to inf and 5.5.5"]


def test_unparsable_answers_count_as_iou_0_and_lower_the_parse_rate(clean_root: Path, tmp_path: Path) -> None:
    overrides = run_overrides(clean_root, "data.batch_size=4", "trainer.limit_test_batches=1")
    stage, datamodule, trainer = build_run(compose_run("train", overrides, tmp_path))
    answered: list[dict[str, Any]] = []

    def generate_text(batch: Any, embeds: Any, max_new_tokens: int) -> list[str]:
        # The first sample gets the reference answer (its spans parse), the others unparsable text.
        texts = [batch["answer_text"][0], *UNPARSABLE][: len(batch["sample_id"])]
        answered.append({"duration": float(batch["duration"][0]), "gt": [tuple(map(float, s)) for s in batch["spans"][0]],
                         "texts": texts})  # fmt: skip
        return texts

    stage.generate_text = generate_text
    (metrics,) = trainer.test(stage, datamodule=datamodule, verbose=False)

    (batch,) = answered
    assert len(batch["texts"]) == 4
    good = stage.span_parser(batch["texts"][0], batch["duration"])
    assert good and all(stage.span_parser(text, batch["duration"]) == [] for text in UNPARSABLE)
    iou = span_iou(good[0], batch["gt"])
    assert iou > 0.7, "the reference answer parses back to (nearly) its ground truth"
    assert metrics["test/count"] == 4
    assert metrics["test/parse_rate"] == pytest.approx(1 / 4)
    assert metrics["test/mIoU"] == pytest.approx(iou / 4, abs=1e-6)  # three IoUs of 0
    assert metrics["test/R@0.7"] == pytest.approx(1 / 4)
