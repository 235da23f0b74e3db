"""Tests of damo-augment (src/damo_lit/augment)."""
