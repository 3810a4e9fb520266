"""HTTP layer: Starlette app, routes per dialect, streaming helpers. It only translates."""
