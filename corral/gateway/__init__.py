"""Gateway: API keys, rate limits, the request log, timing headers, metrics and beacons.

This package is the layer below HTTP: it imports neither Starlette nor
``corral.server``. The HTTP middleware (``corral.server.middleware``) calls
into it; the CLI (``corral.cli_gateway``) opens the same database directly.
"""
