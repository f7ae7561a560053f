"""Evaluators: models and scores that judge generated outputs (not used by the apps at run time)."""
