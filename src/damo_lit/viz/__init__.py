"""Pictures for people: timelines of grounding answers against the ground truth."""

from damo_lit.viz.timeline import figure_to_array, render_timeline, timeline_figure

__all__ = ["figure_to_array", "render_timeline", "timeline_figure"]
