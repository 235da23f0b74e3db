"""Annotation sources: each maps a public annotation format to DaMO `Record`s."""
