"""LangChain against a real server: ``langchain-openai`` on /v1, ``langchain-ollama`` on /api.

Chat models are invoked and streamed, structured output and tool calls go
through ChatOpenAI, and both embeddings classes are checked against
Ollama's own /api/embed answer for the same text.

``OpenAIEmbeddings`` runs with ``check_embedding_ctx_length=False``: by
default it first tokenizes every text with tiktoken's OpenAI vocabulary
(downloading ``cl100k_base`` from the internet) and sends those token ids,
which mean nothing to a model with another vocabulary. With the check off it
sends the strings, which is what a non-OpenAI server needs.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from tests.conftest import SMOLLM
from tests.test_openai_api import TOOLS_MODEL, TOOLS_TEMPLATE, WEATHER_CALL

PROMPT = "Say hello."


def _api_embed(base_url: str, text: str) -> list[float]:
    r = httpx.post(base_url + "/api/embed", json={"model": SMOLLM, "input": text}, timeout=60)
    return list(r.json()["embeddings"][0])


@pytest.fixture(scope="module")
def chat_openai(base_url: str) -> ChatOpenAI:
    return ChatOpenAI(
        model=SMOLLM,
        base_url=f"{base_url}/v1",
        api_key="x",
        temperature=0,
        max_tokens=8,
        stream_usage=True,
        max_retries=0,
    )


def test_chat_openai_invoke_and_stream(chat_openai: ChatOpenAI) -> None:
    reply = chat_openai.invoke(PROMPT)
    assert isinstance(reply.content, str) and reply.content
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata["output_tokens"] == 8 and reply.usage_metadata["input_tokens"] > 5
    chunks = list(chat_openai.stream(PROMPT))
    assert len(chunks) > 2 and "".join(str(c.content) for c in chunks) == reply.content
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert len(usage) == 1 and usage[0]["output_tokens"] == 8


class Person(BaseModel):
    name: str
    age: int


def test_chat_openai_structured_output(base_url: str) -> None:
    llm = ChatOpenAI(model=SMOLLM, base_url=f"{base_url}/v1", api_key="x", temperature=0, max_tokens=60, max_retries=0)
    structured = llm.with_structured_output(Person, method="json_schema")
    person = structured.invoke("Invent a person.")
    assert isinstance(person, Person) and person.name


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city"""
    return "18 degrees and sunny"


def test_chat_openai_tool_calls(base_url: str) -> None:
    r = httpx.post(
        base_url + "/api/create",
        json={"model": TOOLS_MODEL, "from": SMOLLM, "template": TOOLS_TEMPLATE, "stream": False},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    # response_format goes in extra_body: LangChain would otherwise switch to the
    # SDK's parse(), which insists on strict tools. It forces the tiny model to call.
    llm = ChatOpenAI(
        model=TOOLS_MODEL,
        base_url=f"{base_url}/v1",
        api_key="x",
        temperature=0,
        max_tokens=40,
        extra_body={"response_format": WEATHER_CALL},
        max_retries=0,
    ).bind_tools([get_weather])
    reply = llm.invoke("What is the weather in Paris?")
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"} and len(call["id"]) == 9
    chunks = list(llm.stream("What is the weather in Paris?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("get_weather", {"city": "Paris"})]


def test_openai_embeddings(base_url: str) -> None:
    emb = OpenAIEmbeddings(
        model=SMOLLM, base_url=f"{base_url}/v1", api_key="x", check_embedding_ctx_length=False, max_retries=0
    )
    query = emb.embed_query("The quick brown fox")
    assert len(query) == 576 and np.allclose(query, _api_embed(base_url, "The quick brown fox"), atol=1e-6)
    docs = emb.embed_documents(["cat", "dog"])
    assert len(docs) == 2 and all(len(d) == 576 for d in docs)


def test_chat_ollama_invoke_and_stream(base_url: str) -> None:
    llm = ChatOllama(model=SMOLLM, base_url=base_url, temperature=0, num_predict=8)
    reply = llm.invoke(PROMPT)
    assert isinstance(reply.content, str) and reply.content
    assert reply.response_metadata["done_reason"] == "length" and reply.usage_metadata["output_tokens"] == 8
    chunks = list(llm.stream(PROMPT))
    assert len(chunks) > 2 and "".join(str(c.content) for c in chunks) == reply.content
    assert [c.usage_metadata["output_tokens"] for c in chunks if c.usage_metadata] == [8]


def test_ollama_embeddings(base_url: str) -> None:
    emb = OllamaEmbeddings(model=SMOLLM, base_url=base_url)
    query = emb.embed_query("The quick brown fox")
    assert np.allclose(query, _api_embed(base_url, "The quick brown fox"), atol=1e-6)
    docs = emb.embed_documents(["cat", "dog"])
    assert len(docs) == 2 and all(len(d) == 576 for d in docs)
