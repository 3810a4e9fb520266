"""Inference engines behind a small interface (see base.py)."""
