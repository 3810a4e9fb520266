"""Model store: Ollama's on-disk layout (manifests and sha256 blobs)."""
