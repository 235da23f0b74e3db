"""Experiment scripts (make bench, make exp-*); `experiments.common` is what the runners share."""
