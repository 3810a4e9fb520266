"""The fleet file and ``--upstream`` arguments: good ones load, each bad field is named in the error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from corral.errors import BadRequest
from corral.fleet.config import FleetConfig, FleetConfigError, UpstreamSpec, from_urls, load_fleet

GOOD = """
routing = "least-loaded"
refresh_interval = 30
health_interval = 2.5
failure_threshold = 5
cooldown = 20
load_margin = 2
default_upstream = "vllm"
prefix_index_size = 1000
block_size = 64
probe_timeout = 1.5
min_prefix_match = 0.25

[[upstream]]
name = "gpu1"
url = "http://10.0.0.1:11434/"

[[upstream]]
name = "vllm"
url = "https://vllm.internal:8000"
kind = "openai"
key_env = "VLLM_KEY"
weight = 4
models = ["Qwen/Qwen2.5-7B-Instruct"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_a_full_fleet_file_loads_with_every_setting(tmp_path: Path) -> None:
    config = load_fleet(write(tmp_path, GOOD), env={"VLLM_KEY": "sekrit"})
    assert config.routing == "least-loaded"
    assert (
        config.refresh_interval,
        config.health_interval,
        config.failure_threshold,
        config.cooldown,
        config.load_margin,
        config.prefix_index_size,
        config.block_size,
        config.probe_timeout,
        config.min_prefix_match,
    ) == (30, 2.5, 5, 20, 2, 1000, 64, 1.5, 0.25)
    gpu1, vllm = config.upstreams
    assert gpu1 == UpstreamSpec("gpu1", "http://10.0.0.1:11434")  # trailing slash dropped, defaults
    assert (vllm.kind, vllm.key, vllm.weight, vllm.models) == ("openai", "sekrit", 4, ("Qwen/Qwen2.5-7B-Instruct",))
    assert config.default is vllm and config.names == ("gpu1", "vllm")


def test_defaults_and_the_first_upstream_as_default_for_model_management(tmp_path: Path) -> None:
    config = load_fleet(
        write(
            tmp_path,
            '[[upstream]]\nname = "a"\nurl = "http://a:1"\n[[upstream]]\nname = "b"\nurl = "http://b:1"\nkey = "k"\n',
        )
    )
    assert config.routing == "cache-aware" and config.failure_threshold == 3 and config.default.name == "a"
    assert config.upstream("b").key == "k"
    with pytest.raises(BadRequest) as err:
        config.upstream("c")
    assert err.value.param == "upstream" and "a, b" in err.value.message


UP = '[[upstream]]\nname = "a"\nurl = "http://a:1"\n'


@pytest.mark.parametrize(
    ("text", "param", "words"),
    [
        ('routing = "fastest"\n' + UP, "routing", "cache-aware, least-loaded, round-robin"),
        ("refresh_interval = 0\n" + UP, "refresh_interval", "must be > 0"),
        ('health_interval = "5s"\n' + UP, "health_interval", "expected a number"),
        ("failure_threshold = 1.5\n" + UP, "failure_threshold", "expected an integer"),
        ("failure_threshold = 0\n" + UP, "failure_threshold", "must be >= 1"),
        ("cooldown = -1\n" + UP, "cooldown", "must be > 0"),
        ("load_margin = -1\n" + UP, "load_margin", "must be >= 0"),
        ("load_margin = true\n" + UP, "load_margin", "expected a number"),
        ('default_upstream = "zz"\n' + UP, "default_upstream", "no upstream is named 'zz'"),
        ("prefix_index_size = 0\n" + UP, "prefix_index_size", "must be >= 1"),
        ("block_size = 0\n" + UP, "block_size", "must be >= 1"),
        ("probe_timeout = nan\n" + UP, "probe_timeout", "expected a number"),
        ("min_prefix_match = 1.5\n" + UP, "min_prefix_match", "must be <= 1"),
        ("min_prefix_match = -0.1\n" + UP, "min_prefix_match", "must be >= 0"),
        ("retries = 2\n" + UP, "retries", "unknown setting"),
        ("", "upstream", "at least one upstream"),
        ('upstream = "http://a:1"\n', "upstream", "array of tables"),
        ('[[upstream]]\nurl = "http://a:1"\n', "upstream[0].name", "required"),
        ('[[upstream]]\nname = "a"\n', "upstream[0].url", "required"),
        (UP + '[[upstream]]\nname = "a b"\nurl = "http://b:1"\n', "upstream[1].name", "invalid name"),
        (UP + '[[upstream]]\nname = "a"\nurl = "http://b:1"\n', "upstream[1].name", "duplicate upstream name 'a'"),
        ('[[upstream]]\nname = "a"\nurl = "ftp://a:1"\n', "upstream[0].url", "expected http://HOST"),
        ('[[upstream]]\nname = "a"\nurl = "a:11434"\n', "upstream[0].url", "expected http://HOST"),
        ('[[upstream]]\nname = "a"\nurl = "http://a:99999"\n', "upstream[0].url", "invalid URL"),
        ('[[upstream]]\nname = "a"\nurl = "http://a:1/?x=1"\n', "upstream[0].url", "no query"),
        ('[[upstream]]\nname = "a"\nurl = 5\n', "upstream[0].url", "expected a string"),
        (UP + 'kind = "vllm"\n', "upstream[0].kind", "ollama, corral, openai"),
        (UP + "weight = 0\n", "upstream[0].weight", "must be > 0"),
        (UP + 'weight = "heavy"\n', "upstream[0].weight", "expected a number"),
        (UP + 'key = ""\n', "upstream[0].key", "non-empty"),
        (UP + 'key = "k"\nkey_env = "K"\n', "upstream[0].key_env", "not both"),
        (UP + 'key_env = "NOT_SET_ANYWHERE"\n', "upstream[0].key_env", "is not set"),
        (UP + "models = []\n", "upstream[0].models", "non-empty list"),
        (UP + 'models = "llama3"\n', "upstream[0].models", "list of model names"),
        (UP + "models = [1]\n", "upstream[0].models", "non-empty list"),
        (UP + "region = 1\n", "upstream[0].region", "unknown field"),
    ],
)
def test_each_bad_field_is_named(tmp_path: Path, text: str, param: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FleetConfigError) as err:
        load_fleet(path, env={})
    assert err.value.param == param, err.value.message
    assert words in err.value.message and param in err.value.message and str(path) in err.value.message
    assert isinstance(err.value, ValueError) and err.value.status == 400


def test_unreadable_and_invalid_toml_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(FleetConfigError, match="cannot read"):
        load_fleet(tmp_path / "missing.toml")
    with pytest.raises(FleetConfigError, match="invalid TOML"):
        load_fleet(write(tmp_path, "[[upstream]\n"))


def test_upstream_arguments_name_and_kind() -> None:
    config = from_urls(
        ["http://a:11434", "gpu2=http://b:11434/", "vllm=openai+http://c:8000", "corral+https://d", "http://e/x"],
        routing="round-robin",
    )
    assert [(u.name, u.url, u.kind) for u in config.upstreams] == [
        ("u1", "http://a:11434", "ollama"),
        ("gpu2", "http://b:11434", "ollama"),
        ("vllm", "http://c:8000", "openai"),
        ("u4", "https://d", "corral"),
        ("u5", "http://e/x", "ollama"),
    ]
    assert config.routing == "round-robin"
    # "=" inside the URL is not a name.
    assert from_urls(["http://a:1/path=x"]).upstreams[0].name == "u1"


@pytest.mark.parametrize(
    ("urls", "param"),
    [
        ([], "upstream"),
        (["bad name=http://a:1"], "--upstream[0].name"),
        (["tgi+http://a:1"], "--upstream[0].kind"),
        (["localhost:11434"], "--upstream[0].url"),
        (["http://a:1", "u1=http://b:1"], "--upstream[1].name"),
    ],
)
def test_bad_upstream_arguments_are_named(urls: list[str], param: str) -> None:
    with pytest.raises(FleetConfigError) as err:
        from_urls(urls)
    assert err.value.param == param, err.value.message


def test_replacing_a_setting_validates_again() -> None:
    config = from_urls(["http://a:1"])
    assert dataclasses.replace(config, routing="least-loaded").routing == "least-loaded"
    with pytest.raises(FleetConfigError, match="routing"):
        dataclasses.replace(config, routing="nope")  # type: ignore[arg-type]
    with pytest.raises(FleetConfigError, match="default_upstream"):
        FleetConfig(upstreams=config.upstreams, default_upstream="b")
