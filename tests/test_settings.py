"""Settings from OLLAMA_* / CORRAL_* variables, durations, and CORS origins."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from corral.durations import parse_keep_alive
from corral.errors import BadRequest
from corral.settings import Settings, parse_host
from tests.conftest import ServerProc


def test_defaults(tmp_path: Path) -> None:
    s = Settings.from_env({"CORRAL_HOME": str(tmp_path)})
    assert s.models_dir == tmp_path / "models"
    assert (s.host, s.port) == ("127.0.0.1", 11434)
    assert s.keep_alive == 300 and s.num_parallel == 1 and s.max_queue == 512
    assert s.max_loaded_models == 3 and s.context_length == 4096
    assert s.kv_cache_type == "f16" and s.prompt_cache_mib == 0


def test_prompt_cache_setting(tmp_path: Path) -> None:
    s = Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_PROMPT_CACHE_MIB": "128"})
    assert s.prompt_cache_mib == 128
    with pytest.raises(ValueError):
        Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_PROMPT_CACHE_MIB": "lots"})


def test_corral_twin_wins(tmp_path: Path) -> None:
    env = {
        "CORRAL_HOME": str(tmp_path),
        "OLLAMA_MODELS": "/srv/ollama",
        "CORRAL_MODELS": "/srv/corral",
        "OLLAMA_HOST": "0.0.0.0:9000",
        "OLLAMA_KEEP_ALIVE": "10m",
        "CORRAL_KEEP_ALIVE": "-1",
        "OLLAMA_NUM_PARALLEL": "2",
        "OLLAMA_MAX_QUEUE": "7",
        "OLLAMA_MAX_LOADED_MODELS": "1",
        "OLLAMA_CONTEXT_LENGTH": "8192",
        "CORRAL_CONTEXT_LENGTH": "2048",
        "OLLAMA_ORIGINS": "http://a.example, http://b.example",
    }
    s = Settings.from_env(env)
    assert s.models_dir == Path("/srv/corral")
    assert (s.host, s.port) == ("0.0.0.0", 9000)
    assert s.keep_alive == -1 and s.num_parallel == 2 and s.max_queue == 7 and s.max_loaded_models == 1
    assert s.context_length == 2048
    assert s.origins == ("http://a.example", "http://b.example")
    assert Settings.from_env({"CORRAL_HOME": str(tmp_path), "OLLAMA_MODELS": "/x"}).models_dir == Path("/x")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("", ("http", "127.0.0.1", 11434)),
        ("0.0.0.0", ("http", "0.0.0.0", 11434)),
        (":8080", ("http", "127.0.0.1", 8080)),
        ("example.com:1234", ("http", "example.com", 1234)),
        ("https://example.com", ("https", "example.com", 443)),
        ("http://[::1]:5000", ("http", "::1", 5000)),
    ],
)
def test_parse_host(raw: str, expected: tuple[str, str, int]) -> None:
    assert parse_host(raw) == expected


@pytest.mark.parametrize(
    "raw, seconds",
    [
        ("5m", 300),
        ("1h30m", 5400),
        ("-1", -1),
        ("0", 0),
        (30, 30),
        ("1.5s", 1.5),
        ("-1m", -60),
        ("250ms", 0.25),
    ],
)
def test_keep_alive(raw: object, seconds: float) -> None:
    assert parse_keep_alive(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["soon", "5 minutes", "m5", True, [1]])
def test_bad_keep_alive(raw: object) -> None:
    with pytest.raises(BadRequest):
        parse_keep_alive(raw)


def test_cors_origins(start_server: Callable[..., ServerProc], server: ServerProc) -> None:
    srv = start_server(
        {
            "OLLAMA_MODELS": str(server.home / "models"),
            "CORRAL_STARTER_MODELS": "0",
            "OLLAMA_ORIGINS": "http://allowed.example",
        }
    )

    def preflight(origin: str) -> httpx.Response:
        return httpx.options(srv.url + "/api/chat", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})

    assert preflight("http://localhost:3000").headers.get("access-control-allow-origin") == "http://localhost:3000"
    assert preflight("http://allowed.example").headers.get("access-control-allow-origin") == "http://allowed.example"
    assert "access-control-allow-origin" not in preflight("http://evil.example").headers


def test_kv_cache_type(tmp_path: Path) -> None:
    s = Settings.from_env({"CORRAL_HOME": str(tmp_path), "OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_FLASH_ATTENTION": "1"})
    assert s.kv_cache_type == "q8_0" and s.flash_attention
    with pytest.raises(ValueError):
        Settings.from_env({"CORRAL_HOME": str(tmp_path), "OLLAMA_KV_CACHE_TYPE": "q2"})


def test_cors_headers_only_for_cross_origin_requests(server: ServerProc) -> None:
    # Like Ollama's CORS layer: a request with no Origin is left alone (no
    # Vary, no Allow-Origin); one from an allowed origin gets it mirrored.
    plain = httpx.get(server.url + "/api/version")
    assert plain.status_code == 200 and "vary" not in plain.headers
    assert "access-control-allow-origin" not in plain.headers
    cross = httpx.get(server.url + "/api/version", headers={"Origin": "http://localhost:5173"})
    assert cross.headers.get("access-control-allow-origin") == "http://localhost:5173"
    assert "Origin" in cross.headers.get("vary", "")


def test_gateway_settings(tmp_path: Path) -> None:
    s = Settings.from_env({"CORRAL_HOME": str(tmp_path)})
    assert s.no_auth is False and s.log_retention == 30 * 86400
    s = Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_NO_AUTH": "1", "CORRAL_LOG_RETENTION": "12h"})
    assert s.no_auth is True and s.log_retention == 12 * 3600
    # Ollama has neither knob, so there is no OLLAMA_ twin
    s = Settings.from_env({"CORRAL_HOME": str(tmp_path), "OLLAMA_NO_AUTH": "1", "OLLAMA_LOG_RETENTION": "1h"})
    assert s.no_auth is False and s.log_retention == 30 * 86400
    with pytest.raises(ValueError, match="CORRAL_LOG_RETENTION"):
        Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_LOG_RETENTION": "forever"})


def test_registry_keys(tmp_path: Path) -> None:
    env = {"CORRAL_HOME": str(tmp_path)}
    assert Settings.from_env(env).registry_keys == () and Settings.from_env(env).registry_key("x") is None
    raw = " 127.0.0.1:11434=corral-aaa , HTTPS://Reg.Example/=corral-b=b,,"
    s = Settings.from_env({**env, "CORRAL_REGISTRY_KEYS": raw})
    assert s.registry_keys == (("127.0.0.1:11434", "corral-aaa"), ("reg.example", "corral-b=b"))
    assert s.registry_key("127.0.0.1:11434") == "corral-aaa" and s.registry_key("REG.example") == "corral-b=b"
    # matched exactly: another port, or a host with a port when none was given, gets nothing
    assert s.registry_key("127.0.0.1:11435") is None and s.registry_key("reg.example:443") is None
    assert s.registry_key("127.0.0.1") is None and s.registry_key("evil.example") is None
    assert "corral-aaa" not in repr(s) and "corral-b" not in repr(s)  # a logged Settings shows no key
    # Ollama has no such knob: no OLLAMA_ twin
    assert Settings.from_env({**env, "OLLAMA_REGISTRY_KEYS": "h=k"}).registry_keys == ()


@pytest.mark.parametrize(
    "raw, message",
    [
        ("corral-secret-1", "entry 1: write host\\[:port\\]=key"),
        ("a.example=k1,corral~secret=a.example", "entry 2: the part before '=' is not a registry host"),
        ("host/path=corral-secret-1", "entry 1: the part before '=' is not"),
        ("a.example=", "entry 1: the key for a.example is empty"),
        ("a.example=corral secret-1", "entry 1: the key for a.example is empty or contains whitespace"),
        ("a.example=corral-secret-1,A.example=corral-secret-2", "entry 2: a.example is given a key twice"),
    ],
)
def test_bad_registry_keys_never_echo_a_key(tmp_path: Path, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid CORRAL_REGISTRY_KEYS " + message) as err:
        Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_REGISTRY_KEYS": raw})
    assert "secret" not in str(err.value)
