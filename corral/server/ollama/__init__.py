"""Ollama's REST dialect: wire types and the routes that translate it onto the backend and the store."""
