"""Corral benchmark harness: Corral against llama.cpp peers on the same GGUF.

Entry point: ``python -m bench.run`` (see ``bench/README.md``).
"""
