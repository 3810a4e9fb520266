"""The fleet: one gateway in front of many inference servers (Ollama, Corral, vLLM, llama-server).

Core logic only, with no web framework: the proxy wires it into its routes.

- :mod:`corral.fleet.config`: the fleet file and ``--upstream`` arguments
  (:class:`FleetConfig`, :class:`UpstreamSpec`, :func:`load_fleet`, :func:`from_urls`).
- :mod:`corral.fleet.state`: each upstream's live state: catalog, outstanding
  requests, circuit breaker, counters (:class:`FleetState`, :class:`UpstreamState`).
- :mod:`corral.fleet.discovery`: refreshing that state from the upstreams, and
  the merged ``/api/tags``, ``/api/ps`` and ``/v1/models`` answers.
- :mod:`corral.fleet.routing`: the :class:`Router` (cache-aware, least-loaded,
  round-robin).
- :mod:`corral.fleet.openai_backend`: :class:`OpenAIBackend`, the Backend seam
  over an OpenAI-compatible server, so Ollama clients can use it
  (:mod:`corral.fleet.openai_wire` holds its wire translation).

A request's life in the gateway::

    decision = router.route(model, prefix_of(body), exclude=tried)
    state = fleet.get(decision.upstream)
    with state.track():
        ...send it; on an upstream failure: state.failed(reason), and before the
        first byte: fleet.note_failover(decision.upstream), retry once with
        exclude={decision.upstream}...
        state.succeeded(); router.record(decision)
"""

from corral.fleet.config import FleetConfig, FleetConfigError, UpstreamSpec, from_urls, load_fleet
from corral.fleet.discovery import Discovery, merged_openai_models, merged_ps, merged_tags
from corral.fleet.openai_backend import OpenAIBackend
from corral.fleet.routing import Decision, NoUpstreamAvailable, Router, call_prefix, prefix_of
from corral.fleet.state import CircuitBreaker, FleetState, UpstreamState

__all__ = [
    "CircuitBreaker",
    "Decision",
    "Discovery",
    "FleetConfig",
    "FleetConfigError",
    "FleetState",
    "NoUpstreamAvailable",
    "OpenAIBackend",
    "Router",
    "UpstreamSpec",
    "UpstreamState",
    "call_prefix",
    "from_urls",
    "load_fleet",
    "merged_openai_models",
    "merged_ps",
    "merged_tags",
    "prefix_of",
]
