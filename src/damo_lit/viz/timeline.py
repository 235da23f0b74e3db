"""A grounding answer at a glance: the video's time axis with the true and the predicted span.

Reading R@0.5 tells how often a model is right, not how it is wrong (too early, too long,
the wrong event). One picture per query shows it: a row of frame thumbnails placed at their
times, the ground-truth span(s) and the predicted span(s) as coloured bars on a seconds axis,
and the IoU in the title. Drawn with matplotlib's Agg backend, so it works on a headless node
and returns pixels that W&B or a PNG writer take as they are. It builds a Figure on an Agg
canvas directly (no pyplot), so it never changes the caller's matplotlib backend.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from matplotlib.patches import Patch

from damo_lit.metrics.spans import Span, best_iou, clean_span

GT_COLOR = "#2ca02c"  # green
PRED_COLOR = "#d62728"  # red
NO_SPAN_TEXT = "no span"
GT_ROW, PRED_ROW = 1.0, 0.0
BAR_HEIGHT = 0.6
THUMB_HEIGHT_PX = 64


def _valid(spans: Sequence[Span] | None) -> list[Span]:
    return [s for s in (clean_span(s) for s in (spans or ())) if s is not None]


def timeline_figure(
    duration: float,
    gt_spans: Sequence[Span],
    pred_spans: Sequence[Span] | None,
    thumbnails: Sequence[tuple[float, np.ndarray]] = (),
    title: str = "",
    width_in: float = 10.0,
    dpi: int = 100,
) -> Figure:
    """The timeline as a matplotlib Figure (its Agg canvas attached); `render_timeline` rasterises it.

    The first predicted span is the model's answer (solid bar), as the metrics take it; further ones
    are drawn fainter. An empty or unusable answer (zero length, NaN) is "no span" and IoU 0, as the
    metrics score it, even where a later span is usable.
    The bars axis is `fig.axes[-1]`, with data x in seconds.
    """
    duration = float(duration)
    if not np.isfinite(duration) or duration <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    gts = _valid(gt_spans)
    answer = clean_span(pred_spans[0]) if pred_spans else None
    later = _valid(list(pred_spans or ())[1:])
    has_thumbs = len(thumbnails) > 0
    height_in = 3.4 if has_thumbs else 2.2
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    if has_thumbs:
        grid = fig.add_gridspec(2, 1, height_ratios=(1.1, 1.0), hspace=0.05)
        ax_thumbs = fig.add_subplot(grid[0])
        ax = fig.add_subplot(grid[1], sharex=ax_thumbs)
    else:
        ax_thumbs = None
        ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(left=0.13, right=0.98, top=0.86, bottom=0.2 if has_thumbs else 0.3)

    for start, end in gts:
        ax.barh(GT_ROW, end - start, left=start, height=BAR_HEIGHT, color=GT_COLOR)
    for (start, end), alpha in [(span, 0.35) for span in later] + ([(answer, 1.0)] if answer else []):
        ax.barh(PRED_ROW, end - start, left=start, height=BAR_HEIGHT, color=PRED_COLOR, alpha=alpha)
    if answer is None:
        ax.text(duration / 2, PRED_ROW, NO_SPAN_TEXT, ha="center", va="center", color="0.35", style="italic")
    ax.set_xlim(0.0, duration)
    ax.set_ylim(-0.6, 1.6)
    ax.set_yticks([PRED_ROW, GT_ROW], ["prediction", "ground truth"])
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", color="0.85", linewidth=0.6)
    ax.set_axisbelow(True)
    pred_handle = (
        Patch(color=PRED_COLOR, label="prediction")
        if answer is not None
        else Patch(facecolor="none", edgecolor="0.35", linestyle=":", label=f"prediction: {NO_SPAN_TEXT}")
    )
    fig.legend(handles=[Patch(color=GT_COLOR, label="ground truth"), pred_handle], loc="lower right", ncol=2,
               frameon=False, fontsize=8, borderaxespad=0.3)

    if ax_thumbs is not None:
        ax_thumbs.set_ylim(0, 1)
        ax_thumbs.axis("off")
        for time_s, image in thumbnails:
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] not in (3, 4) or image.shape[0] == 0:
                raise ValueError(f"thumbnail at {time_s} s must be an H x W x 3 uint8 array, got shape {image.shape}")
            zoom = THUMB_HEIGHT_PX / image.shape[0] * dpi / 100.0
            box = AnnotationBbox(OffsetImage(image, zoom=zoom), (float(time_s), 0.5), frameon=True, pad=0.1,
                                 box_alignment=(0.5, 0.5), annotation_clip=False)
            ax_thumbs.add_artist(box)
            ax.axvline(float(time_s), color="0.6", linewidth=0.6, linestyle=":")

    if answer is not None and gts:
        score = f"IoU {best_iou(answer, gts):.2f}"
    elif gts:
        score = "IoU 0.00 (no span)"
    else:
        score = "IoU n/a (no ground truth)"
    # the title is the user's question: a `$` in it is text, not the start of matplotlib math
    # (`when is $5 shown` would raise at draw time, in the middle of validation)
    fig.suptitle(f"{title}  |  {score}" if title else score, fontsize=10, parse_math=False)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Rasterise a figure on its Agg canvas to an (H, W, 3) uint8 array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def render_timeline(
    duration: float,
    gt_spans: Sequence[Span],
    pred_spans: Sequence[Span] | None,
    thumbnails: Sequence[tuple[float, np.ndarray]] = (),
    title: str = "",
) -> np.ndarray:
    """(H, W, 3) uint8 picture of one grounding query: thumbnails (time_s, HxWx3 uint8) along the
    axis, ground truth in green, prediction in red (or "no span"), IoU in the title."""
    return figure_to_array(timeline_figure(duration, gt_spans, pred_spans, thumbnails, title))
