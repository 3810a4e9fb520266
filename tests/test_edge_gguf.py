"""Edge cases on tiny GGUF files built by the tests (see tests/tiny_gguf.py).

Uploaded through the official client's ``create_blob`` + ``create(files=...)``
and run on the real engine: an unknown architecture, a file that is not
GGUF, context overflow with context shift, and stop sequences.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import pytest

from tests.tiny_gguf import tiny_llama, unknown_arch


@pytest.fixture(scope="module")
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=120)


@pytest.fixture(scope="module")
def tiny(client: ollama.Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    digest = client.create_blob(path)
    statuses = [s.status for s in client.create(model="tiny-llama", files={"tiny.gguf": digest}, stream=True)]
    assert statuses[-1] == "success" and "writing manifest" in statuses
    return "tiny-llama:latest"


def test_tiny_model_lists_with_details(client: ollama.Client, tiny: str) -> None:
    m = {m.model: m for m in client.list().models}[tiny]
    assert m.details.family == "llama" and m.details.quantization_level == "F32"


def test_unknown_architecture_is_a_clear_400(client: ollama.Client, tmp_path: Path) -> None:
    digest = client.create_blob(unknown_arch(tmp_path / "odd.gguf"))
    for _ in client.create(model="mystery", files={"odd.gguf": digest}, stream=True):
        pass
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="mystery", prompt="hi")
    assert err.value.status_code == 400
    assert 'unsupported model architecture "frobnicator"' in err.value.error


def test_non_gguf_file_is_rejected(client: ollama.Client, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a gguf file at all")
    digest = client.create_blob(bogus)
    with pytest.raises(ollama.ResponseError) as err:
        for _ in client.create(model="bogus", files={"bogus.gguf": digest}, stream=True):
            pass
    assert err.value.status_code == 400 and "GGUF" in err.value.error
    assert "bogus:latest" not in {m.model for m in client.list().models}


def test_blob_digest_mismatch_is_400(base_url: str) -> None:
    wrong = "sha256:" + "0" * 64
    r = httpx.post(f"{base_url}/api/blobs/{wrong}", content=b"hello")
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    assert httpx.head(f"{base_url}/api/blobs/{wrong}").status_code == 404
    assert httpx.head(f"{base_url}/api/blobs/not-a-digest").status_code == 400


def test_context_overflow_shifts_and_truncates(client: ollama.Client, tiny: str) -> None:
    # Prompt far longer than num_ctx: truncated to fit, generation still runs.
    r = client.generate(
        model=tiny, prompt="abcdefgh " * 200, raw=True, options={"num_ctx": 256, "num_predict": 16, "temperature": 0}
    )
    assert r.done and 0 < r.prompt_eval_count < 256 and r.eval_count == 16
    # Generation past the window: the context shifts instead of failing.
    r = client.generate(
        model=tiny, prompt="hello", raw=True, options={"num_ctx": 256, "num_predict": 400, "temperature": 0}
    )
    assert r.done and r.eval_count > 256  # more tokens than the window holds


def test_stop_sequences_cut_output(client: ollama.Client, tiny: str) -> None:
    opts = {"num_ctx": 256, "num_predict": 64, "temperature": 0}
    full = client.generate(model=tiny, prompt="hello", raw=True, options=opts).response
    ascii_at = [i for i, ch in enumerate(full) if i >= 3 and ch.isascii() and ch.isalnum()]
    assert ascii_at, full
    stop = full[ascii_at[0]]
    cut = client.generate(model=tiny, prompt="hello", raw=True, options={**opts, "stop": [stop]})
    assert cut.done_reason == "stop"
    assert cut.response == full[: full.index(stop)]


def test_suffix_uses_fill_in_the_middle_tokens(client: ollama.Client, tmp_path: Path) -> None:
    digest = client.create_blob(tiny_llama(tmp_path / "fim.gguf", fim=True))
    for _ in client.create(model="tiny-fim", files={"fim.gguf": digest}):
        pass
    assert "insert" in client.show("tiny-fim").capabilities
    r = client.generate(
        model="tiny-fim",
        prompt="def add(a, b):\n",
        suffix="\n    return c",
        options={"num_ctx": 256, "num_predict": 6, "temperature": 0},
    )
    assert r.done and 1 <= r.eval_count <= 6  # a random model may end early
    # The prompt went in as <fim_prefix> prefix <fim_suffix> suffix <fim_middle>.
    prefix, suffix = len(b"def add(a, b):\n"), len(b"\n    return c")
    assert r.prompt_eval_count == prefix + suffix + 3
    assert r.context[:1] == [258] and 260 in r.context
