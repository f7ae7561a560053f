"""Baselines that benchmarks compare against, not part of the library (Time-LLM)."""
