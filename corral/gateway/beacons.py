"""Analytics beacons: the body of ``POST /api/playground/analytics``, validated.

The playground sends one JSON event per call: its type (``event``), the
model, client-side timings in milliseconds, the HTTP status it saw, an error
text, and ``clientProfile`` (user agent, screen, timezone, language) for
attribution. Unknown fields are kept, since the page may add some, but
bounded: at most :data:`MAX_EXTRA_FIELDS` per object, and the whole body at
most :data:`MAX_BEACON_BYTES` (413 above). Anything else that does not fit
is a 400. :func:`parse_beacon` is the one entry point.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from corral.errors import BadRequest, PayloadTooLarge

MAX_BEACON_BYTES = 64 * 1024
MAX_EXTRA_FIELDS = 32
MAX_TIMINGS = 64


def _bound_extras(model: BaseModel) -> None:
    extra = model.model_extra or {}
    if len(extra) > MAX_EXTRA_FIELDS:
        raise ValueError(f"too many extra fields ({len(extra)}; at most {MAX_EXTRA_FIELDS})")


class ClientProfile(BaseModel):
    """Who sent the event, as the browser describes itself."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    userAgent: str | None = Field(default=None, max_length=1024)
    screen: str | dict[str, int | float | str] | None = None
    timezone: str | None = Field(default=None, max_length=128)
    language: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _bounded(self) -> ClientProfile:
        _bound_extras(self)
        return self


class AnalyticsEvent(BaseModel):
    """One playground analytics event."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    event: str = Field(min_length=1, max_length=64)
    model: str | None = Field(default=None, max_length=256)
    timings: dict[str, float] | None = Field(default=None, max_length=MAX_TIMINGS)
    status: int | None = Field(default=None, ge=0, le=999)
    error: str | None = Field(default=None, max_length=4096)
    clientProfile: ClientProfile | None = None

    @model_validator(mode="after")
    def _bounded(self) -> AnalyticsEvent:
        _bound_extras(self)
        return self


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"invalid JSON in analytics event: {first['msg']}"
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid analytics event: {where}: {first['msg']}{more}"


def parse_beacon(body: bytes) -> AnalyticsEvent:
    """Validate one event body; :class:`PayloadTooLarge` over 64 KiB, :class:`BadRequest` otherwise."""
    if len(body) > MAX_BEACON_BYTES:
        raise PayloadTooLarge(f"analytics event is {len(body)} bytes; the limit is {MAX_BEACON_BYTES}")
    try:
        return AnalyticsEvent.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None


def beacon_dict(event: AnalyticsEvent) -> dict[str, Any]:
    """The event as stored: declared and extra fields, unset optional ones left out."""
    return event.model_dump(mode="json", exclude_none=True)
