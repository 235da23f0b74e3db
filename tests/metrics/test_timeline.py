"""The timeline picture: size, bars at the right x positions, thumbnails at their times, "no span"."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.text import Text

from damo_lit.viz import figure_to_array, render_timeline, timeline_figure
from damo_lit.viz.timeline import GT_COLOR, GT_ROW, NO_SPAN_TEXT, PRED_COLOR, PRED_ROW

GT_RGB = np.array(to_rgb(GT_COLOR)) * 255
PRED_RGB = np.array(to_rgb(PRED_COLOR)) * 255


def pixel_xy(fig, x_seconds: float, row: float, image_height: int) -> tuple[int, int]:
    """Image (column, row) of a point given in the bars axis' data coordinates."""
    ax = fig.axes[-1]
    x, y = ax.transData.transform((x_seconds, row))
    return int(round(x)), int(round(image_height - y))


def is_colour(image: np.ndarray, col: int, row: int, rgb: np.ndarray, tol: float = 12) -> bool:
    return bool(np.abs(image[row, col].astype(float) - rgb).max() <= tol)


def test_image_size_and_type():
    image = render_timeline(14.2, [(3.2, 5.0)], [(3.6, 6.1)], title="When does the tone sound?")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert 150 <= image.shape[0] <= 600 and 600 <= image.shape[1] <= 1600
    assert image.std() > 10  # something is drawn


def test_bars_land_at_their_times():
    duration, gt, pred = 20.0, (4.0, 8.0), (10.0, 16.0)
    fig = timeline_figure(duration, [gt], [pred])
    image = figure_to_array(fig)
    height = image.shape[0]
    for (start, end), row, rgb in ((gt, GT_ROW, GT_RGB), (pred, PRED_ROW, PRED_RGB)):
        inside = [start + 0.1 * (end - start), (start + end) / 2, end - 0.1 * (end - start)]
        for t in inside:
            assert is_colour(image, *pixel_xy(fig, t, row, height), rgb), (row, t)
        for t in (start - 0.4, end + 0.4):  # just outside the span: not the bar's colour
            assert not is_colour(image, *pixel_xy(fig, t, row, height), rgb), (row, t)
    # and the bars are on their own rows: no prediction colour on the ground-truth row
    assert not is_colour(image, *pixel_xy(fig, 13.0, GT_ROW, height), PRED_RGB)
    assert "IoU 0.00" in fig._suptitle.get_text()


def test_iou_in_title():
    fig = timeline_figure(10.0, [(2.0, 6.0)], [(4.0, 8.0)], title="q")
    assert fig._suptitle.get_text() == "q  |  IoU 0.33"


@pytest.mark.parametrize("question", ["when is $#1 or $2 shown", "where does $HOME and $PATH appear", "$a_b_c$"])
def test_a_question_with_dollars_is_drawn_as_text(question: str):
    """A question is text: matplotlib would read `$...$` as math and fail at draw time, which
    stopped a run at the end of validation."""
    image = render_timeline(10.0, [(1.0, 2.0)], [(1.5, 3.0)], title=question)
    assert image.ndim == 3 and image.dtype == np.uint8


def test_no_prediction_is_drawn_as_no_span():
    for pred in (None, [], [(3.0, 3.0)], [(float("nan"), 2.0)]):
        fig = timeline_figure(10.0, [(2.0, 6.0)], pred)
        image = figure_to_array(fig)
        texts = [t.get_text() for t in fig.findobj(Text)]
        assert NO_SPAN_TEXT in texts, pred
        ax = fig.axes[-1]
        (x0, y0), (x1, y1) = ax.get_window_extent().get_points()
        h = image.shape[0]
        inside_axes = image[int(h - y1) : int(h - y0), int(x0) : int(x1)].astype(float)
        assert not (np.abs(inside_axes - PRED_RGB).max(axis=-1) <= 12).any(), pred  # no red bar anywhere
        assert (np.abs(inside_axes - GT_RGB).max(axis=-1) <= 12).any()  # the ground truth still is
        assert "no span" in fig._suptitle.get_text()


def test_an_unusable_answer_is_no_span_even_beside_a_usable_later_one():
    """The metrics score the first span (here empty: IoU 0); the picture once scored the second, IoU 1."""
    fig = timeline_figure(10.0, [(2.0, 4.0)], [(5.0, 5.0), (2.0, 4.0)])
    assert fig._suptitle.get_text() == "IoU 0.00 (no span)"
    assert NO_SPAN_TEXT in [t.get_text() for t in fig.findobj(Text)]


def test_thumbnails_sit_at_their_times():
    blue = np.zeros((30, 40, 3), dtype=np.uint8)
    blue[..., 2] = 255
    yellow = np.zeros((30, 40, 3), dtype=np.uint8)
    yellow[..., :2] = 255
    duration = 30.0
    fig = timeline_figure(duration, [(2.0, 4.0)], [(2.0, 4.0)], thumbnails=[(6.0, blue), (24.0, yellow)])
    image = figure_to_array(fig).astype(int)
    for t, rgb in ((6.0, (0, 0, 255)), (24.0, (255, 255, 0))):
        mask = (np.abs(image - np.array(rgb)).max(axis=-1) <= 10)
        cols = np.nonzero(mask.any(axis=0))[0]
        assert cols.size > 10, t
        expected_col, _ = pixel_xy(fig, t, PRED_ROW, image.shape[0])
        assert abs((cols.min() + cols.max()) / 2 - expected_col) <= 3, t
        rows = np.nonzero(mask.any(axis=1))[0]
        _, bars_top = pixel_xy(fig, t, GT_ROW + 0.6, image.shape[0])
        assert rows.max() < bars_top  # above the bars
    assert render_timeline(duration, [(2.0, 4.0)], None, thumbnails=[(6.0, blue)]).shape[0] > render_timeline(
        duration, [(2.0, 4.0)], None
    ).shape[0]


def test_bad_input_raises_clearly():
    with pytest.raises(ValueError, match="duration"):
        render_timeline(0.0, [(0, 1)], None)
    with pytest.raises(ValueError, match="thumbnail at 1.0 s"):
        render_timeline(5.0, [(0, 1)], None, thumbnails=[(1.0, np.zeros((4, 4), dtype=np.uint8))])
