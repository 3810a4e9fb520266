"""Corral: an Ollama-compatible LLM server and gateway over in-process llama.cpp."""

__version__ = "0.1.0"
# The Ollama API version we speak; clients such as Open WebUI read it.
OLLAMA_COMPAT_VERSION = "0.12.6"
