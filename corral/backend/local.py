"""LocalBackend: the :class:`~corral.backend.base.Backend` over the local store and llama.cpp.

One internal :class:`ChatCall` / :class:`GenerateCall` goes in; a stream of
:class:`Piece` events and one :class:`Final` comes out. This module resolves
the model from the store, checks its capabilities, renders the prompt, fits
it into the context window, leases a slot from the scheduler and
post-processes output (thinking, tool calls). It also answers the catalog
(models, show, running) from the store and the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from corral.backend.base import (
    ChatCall,
    Common,
    EmbedCall,
    Embeddings,
    Final,
    GenerateCall,
    Loaded,
    ModelInfo,
    ModelSummary,
    Piece,
    RunningModel,
)
from corral.backend.scheduler import Lease, Scheduler
from corral.engine.base import CompletionRequest, DoneEvent, LoadSpec, TokenEvent
from corral.errors import BadRequest, ModelNotFound
from corral.options import merge_options, validate_options
from corral.settings import Settings
from corral.store.modelfile import render_modelfile
from corral.store.records import ModelRecord, load_record
from corral.store.store import LocalModel, Store
from corral.templates.parsers import ThinkingSplitter, ToolCallParser
from corral.templates.render import render_chat, render_generate

log = logging.getLogger(__name__)


def _format_schema(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "object"}
    if isinstance(fmt, dict):
        return fmt
    raise BadRequest(f'invalid format: {fmt!r}; expected "json" or a JSON schema', param="format")


def _closed(schema: Any) -> Any:
    """``schema`` with every object that lists its ``properties`` closed to others (``additionalProperties``
    false where it says nothing), as OpenAI's strict mode does: a forced call then ends once its arguments
    are given instead of inventing more until the token limit."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) if k in ("items", "anyOf", "oneOf", "allOf", "not") else v for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {name: _closed(sub) for name, sub in schema[key].items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _tool_call_schema(tools: list[dict[str, Any]] | None, names: list[str]) -> dict[str, Any]:
    """The JSON schema of one call of a tool named in ``names``: ``{"name": <const>, "arguments": <its
    parameters>}``, one alternative per tool (``anyOf``), in the shape :class:`ToolCallParser` reads back."""
    functions = {(t.get("function") or {}).get("name"): t.get("function") or {} for t in tools or []}
    if not names:
        raise BadRequest("a forced tool choice must name at least one tool", param="tool_choice")
    options: list[dict[str, Any]] = []
    for name in dict.fromkeys(names):
        if name not in functions:
            raise BadRequest(f"tool_choice names {name!r}, which is not one of the tools", param="tool_choice")
        params = functions[name].get("parameters")
        options.append({
            "type": "object",
            "properties": {"name": {"const": name},
                           "arguments": _closed(params) if isinstance(params, dict) and params else {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    return options[0] if len(options) == 1 else {"anyOf": options}


def _think_flag(think: bool | str | None) -> bool | None:
    if think is None:
        return None
    if isinstance(think, str):
        return think in ("high", "medium", "low")
    return bool(think)


class _Shaper:
    """Engine events -> Pieces and the Final, for one request: thinking split off, tool calls parsed.

    Synchronous on purpose: it runs once per token, and a plain call costs a
    fraction of one more async-generator layer.
    """

    def __init__(self, think: bool | None, tools: ToolCallParser | None, lease: Lease, start: float,
                 model_name: str) -> None:
        self.splitter = ThinkingSplitter() if think else None
        self.tools = tools
        self.lease = lease
        self.start = start
        self.model_name = model_name
        self.first_token_at: float | None = None

    def token(self, event: TokenEvent) -> Piece | None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.splitter is not None:
            thinking, content = self.splitter.feed(event.text)
        else:
            thinking, content = "", event.text
        if self.tools is not None and content:
            content = self.tools.feed(content)
        if content or thinking or event.logprobs:
            return Piece(content, thinking, event.logprobs)
        return None

    def final(self, event: DoneEvent) -> Final:
        return Final(
            done_reason=event.done_reason,
            model=self.model_name,
            total_ns=int((time.monotonic() - self.start) * 1e9),
            queue_ns=int(self.lease.queue_seconds * 1e9),
            first_token_at=self.first_token_at,
            load_ns=int(self.lease.load_seconds * 1e9),
            prompt_eval_count=event.prompt_tokens,
            prompt_eval_ns=event.prompt_eval_ns,
            eval_count=event.eval_count,
            eval_ns=event.eval_ns,
            stop_sequence=event.extra.get("stop_word") or None,
        )

    def done(self, event: DoneEvent) -> list[Piece | Final]:
        out: list[Piece | Final] = []
        final = self.final(event)
        if self.splitter is not None:
            thinking, content = self.splitter.flush()
            if content and self.tools is not None:
                content = self.tools.feed(content)
            if thinking or content:
                out.append(Piece(content, thinking))
        if self.tools is not None:
            final.content, final.tool_calls = self.tools.finish()
        out.append(final)
        return out


class LocalBackend:
    """The local store + scheduler + engine, behind the Backend seam."""

    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler

    # ---- resolution ------------------------------------------------------------
    def record(self, name: str) -> ModelRecord:
        return load_record(self.store, name)

    def load_spec(self, record: ModelRecord, options: dict[str, Any]) -> LoadSpec:
        num_ctx = int(options.get("num_ctx") or self.settings.context_length)
        num_ctx = max(256, num_ctx)
        return LoadSpec(
            path=record.gguf_path,
            num_ctx=num_ctx,
            num_parallel=self.settings.num_parallel,
            num_batch=int(options.get("num_batch") or 512),
            num_thread=int(options.get("num_thread") or self.settings.num_threads or 0),
            adapters=tuple(record.adapters),
            projector=record.projector,
            kv_cache_type=self.settings.kv_cache_type,
            flash_attention=self.settings.flash_attention,
            prompt_cache_mib=self.settings.prompt_cache_mib,
        )

    def options_for(self, record: ModelRecord, request_options: dict[str, Any] | None) -> dict[str, Any]:
        return merge_options(validate_options(record.params), validate_options(request_options))

    async def load(self, model: str, *, keep_alive: float | None, options: dict[str, Any] | None) -> Loaded:
        """Empty prompt/messages: only load (or, with keep_alive 0, unload)."""
        record = self.record(model)
        if keep_alive == 0:
            await self.scheduler.unload(record.name)
            return Loaded(record.name, loaded=False)
        opts = self.options_for(record, options)
        await self.scheduler.ensure_loaded(record.name, record.digest, self.load_spec(record, opts), keep_alive)
        return Loaded(record.name, loaded=True)

    # ---- chat / generate ---------------------------------------------------------
    def _check(self, record: ModelRecord, call: Common) -> bool | None:
        think = _think_flag(call.think)
        if think and "thinking" not in record.capabilities:
            raise BadRequest(f'"{record.name}" does not support thinking', param="think")
        if call.images:
            record.require("vision")
        if "completion" not in record.capabilities:
            raise BadRequest(f'"{record.name}" does not support generate', param="model")
        return think

    @staticmethod
    def _bos_eos(record: ModelRecord) -> tuple[str, str]:
        """BOS/EOS strings for templates; BOS is blank when llama.cpp adds it itself."""
        add_bos = bool(record.info.kv.get("tokenizer.ggml.add_bos_token", False))
        return ("" if add_bos else record.info.bos_text), record.info.eos_text

    def _chat_setup(self, call: ChatCall) -> tuple[ModelRecord, bool | None, dict[str, Any], LoadSpec]:
        """Resolve and check a chat call: its model record, think flag, options and load spec."""
        record = self.record(call.model)
        think = self._check(record, call)
        if call.tools:
            record.require("tools")
        opts = self.options_for(record, call.options)
        return record, think, opts, self.load_spec(record, opts)

    def _chat_renderer(self, record: ModelRecord, call: ChatCall,
                       think: bool | None) -> Callable[[list[dict[str, Any]]], str]:
        bos, eos = self._bos_eos(record)

        def render(msgs: list[dict[str, Any]]) -> str:
            return render_chat(record, msgs, tools=call.tools, think=think, bos=bos, eos=eos)

        return render

    async def chat(self, call: ChatCall) -> AsyncIterator[Piece | Final]:
        start = time.monotonic()
        record, think, opts, spec = self._chat_setup(call)
        schema = _format_schema(call.format)
        if call.force_tool is not None:  # checked even when an explicit format takes precedence
            forced = _tool_call_schema(call.tools, call.force_tool)
            schema = forced if schema is None else schema
        async with self.scheduler.acquire(record.name, record.digest, spec, call.keep_alive) as lease:
            _report_slot(call, lease)
            render = self._chat_renderer(record, call, think)
            prompt = await self._fit_chat(lease, list(call.messages), render, spec.num_ctx)
            request = CompletionRequest([prompt], opts, json_schema=schema,
                                        n_probs=call.top_logprobs, want_logprobs=call.logprobs)
            names = {t.get("function", {}).get("name") for t in call.tools or []} or None
            shape = _Shaper(think, ToolCallParser(names) if call.tools else None, lease, start, record.name)
            async for event in lease.model.complete(request):
                if isinstance(event, TokenEvent):
                    if (piece := shape.token(event)) is not None:
                        yield piece
                else:
                    for item in shape.done(event):
                        yield item

    async def count_tokens(self, call: ChatCall) -> int:
        """Tokens of the whole rendered prompt (before any fitting into the context window)."""
        record, think, _, spec = self._chat_setup(call)
        async with self.scheduler.acquire(record.name, record.digest, spec, call.keep_alive) as lease:
            prompt = self._chat_renderer(record, call, think)(list(call.messages))
            return len(await lease.model.tokenize(prompt, add_special=True))

    async def generate(self, call: GenerateCall) -> AsyncIterator[Piece | Final]:
        start = time.monotonic()
        record = self.record(call.model)
        think = self._check(record, call)
        opts = self.options_for(record, call.options)
        schema = _format_schema(call.format)
        spec = self.load_spec(record, opts)
        if call.suffix and not call.raw:
            record.require("insert")
        async with self.scheduler.acquire(record.name, record.digest, spec, call.keep_alive) as lease:
            _report_slot(call, lease)
            bos, eos = self._bos_eos(record)
            parts: list[int | str] = list(call.context or [])
            if call.suffix and not call.raw and record.info.fim is not None and not (call.template or record.template):
                pre, suf, mid = record.info.fim
                parts += [pre, call.prompt, suf, call.suffix, mid]
            elif call.raw:
                parts.append(call.prompt)
            else:
                parts.append(render_generate(record, call.prompt, system=call.system, suffix=call.suffix,
                                             template=call.template, think=think, bos=bos, eos=eos))
            parts = await self._fit_tokens(lease, parts, spec.num_ctx, int(opts.get("num_keep", 4)))
            request = CompletionRequest(parts, opts, json_schema=schema,
                                        n_probs=call.top_logprobs, want_logprobs=call.logprobs)
            output: list[str] = []
            shape = _Shaper(think, None, lease, start, record.name)
            async for event in lease.model.complete(request):
                if isinstance(event, TokenEvent):
                    if (piece := shape.token(event)) is not None:
                        output.append(piece.content)
                        yield piece
                    continue
                for item in shape.done(event):
                    if isinstance(item, Piece):
                        output.append(item.content)
                    elif not call.raw:
                        item.context = await self._context(lease, parts, "".join(output))
                    yield item

    # ---- helpers -------------------------------------------------------------------
    async def _context(self, lease: Lease, parts: list[int | str], output: str) -> list[int]:
        tokens: list[int] = []
        for i, part in enumerate(parts):
            tokens.extend([part] if isinstance(part, int) else await lease.model.tokenize(part, add_special=i == 0))
        if output:
            tokens.extend(await lease.model.tokenize(output, special=False))
        return tokens

    async def _fit_chat(self, lease: Lease, messages: list[dict[str, Any]], render: Any, num_ctx: int) -> str:
        prompt = render(messages)
        if len(prompt.encode()) < num_ctx:
            return str(prompt)
        # Drop the oldest non-system messages until the prompt fits, always
        # keeping the latest message, as Ollama's chatPrompt does.
        while True:
            n = len(await lease.model.tokenize(prompt))
            droppable = [i for i, m in enumerate(messages[:-1]) if m.get("role") != "system"]
            if n < num_ctx - 1 or not droppable:
                break
            messages = messages[: droppable[0]] + messages[droppable[0] + 1 :]
            prompt = render(messages)
        return str(prompt)

    async def _fit_tokens(self, lease: Lease, parts: list[int | str], num_ctx: int, num_keep: int) -> list[int | str]:
        size = sum(1 if isinstance(p, int) else len(p.encode()) for p in parts)
        if size < num_ctx - 1:
            return parts
        tokens: list[int] = []
        for part in parts:
            tokens.extend([part] if isinstance(part, int) else await lease.model.tokenize(part))
        limit = num_ctx - 1 - max(1, min(num_ctx // 4, 512))  # leave room to generate
        if len(tokens) <= limit:
            return list(tokens)
        keep = max(0, min(num_keep, limit // 2))
        log.warning("truncating input prompt: %d tokens > limit %d (num_ctx %d)", len(tokens), limit, num_ctx)
        return list(tokens[:keep] + tokens[len(tokens) - (limit - keep):])

    # ---- embeddings -------------------------------------------------------------------
    async def embed(self, call: EmbedCall) -> Embeddings:
        """Vectors are L2-normalised (again after cutting to ``dimensions``)."""
        start = time.monotonic()
        record = self.record(call.model)
        opts = self.options_for(record, call.options)
        spec = self.load_spec(record, opts)
        async with self.scheduler.acquire(record.name, record.digest, spec, call.keep_alive) as lease:
            limit = min(spec.num_ctx, spec.num_batch)
            prepared: list[list[int] | str] = []
            for item in call.inputs:
                tokens = list(item) if isinstance(item, list) else await lease.model.tokenize(
                    item, special=False, add_special=True)
                if len(tokens) > limit:
                    if not call.truncate:
                        raise BadRequest("input exceeds maximum context length", param="input")
                    tokens = tokens[:limit]
                prepared.append(tokens if tokens else (item if isinstance(item, str) else ""))
            vectors, n_tokens = await lease.model.embed(prepared) if prepared else ([], 0)
            load_ns, queue_ns = int(lease.load_seconds * 1e9), int(lease.queue_seconds * 1e9)
        if call.dimensions is not None:
            vectors = [_normalise(v[:call.dimensions]) for v in vectors]
        return Embeddings(vectors, n_tokens, load_ns, int((time.monotonic() - start) * 1e9), queue_ns)

    # ---- catalog ------------------------------------------------------------------------
    async def unload(self, model: str) -> bool:
        return await self.scheduler.unload(model)

    def _summary(self, local: LocalModel) -> ModelSummary:
        try:
            details = self.record(local.name.display).info.details(parent=_parent(local))
        except Exception:  # a model whose weights can't be read still lists
            details = {"parent_model": "", "format": "gguf", "family": "", "families": None,
                       "parameter_size": "", "quantization_level": ""}
        return ModelSummary(local.name.display, local.name.namespace, local.modified_at, local.size, local.digest,
                            details)

    async def models(self) -> list[ModelSummary]:
        return [self._summary(local) for local in await asyncio.to_thread(self.store.list)]

    async def model(self, name: str) -> ModelSummary:
        try:
            local = await asyncio.to_thread(self.store.get, name)
        except BadRequest:  # a name that can't exist is simply not found
            raise ModelNotFound(name) from None
        return self._summary(local)

    async def show(self, name: str, *, verbose: bool = False) -> ModelInfo:
        record = self.record(name)
        params = dict(record.params)
        modelfile = render_modelfile(
            from_=str(record.gguf_path), parameters=params, template=record.template, system=record.system,
            license=record.license, messages=record.messages, adapters=[str(a) for a in record.adapters],
        )
        return ModelInfo(
            name=record.name, modelfile=modelfile, parameters=params, template=record.effective_template or "",
            system=record.system, license=list(record.license), details=record.info.details(parent=_parent(record.local)),
            messages=list(record.messages), model_info=record.info.model_info(verbose=verbose),
            capabilities=record.capabilities, modified_at=record.local.modified_at,
        )

    async def running(self) -> list[RunningModel]:
        out = []
        for runner in self.scheduler.running():
            try:
                details = self.record(runner.key).info.details()
            except Exception:  # removed from the store while loaded
                details = {}
            out.append(RunningModel(runner.key, runner.digest, runner.model.size_bytes, 0, details,
                                    runner.expires_at, runner.spec.num_ctx))
        return out

    async def close(self) -> None:
        await self.scheduler.close()


def _report_slot(call: Common, lease: Lease) -> None:
    """Tell the caller, as soon as the slot is held, how long it queued and loaded (see ``Common.report``)."""
    if call.report is not None:
        call.report("queue", lease.queue_seconds * 1000)
        call.report("load", lease.load_seconds * 1000)


def _parent(local: LocalModel) -> str:
    layer = local.layer("model")
    return layer.from_ if layer is not None and layer.from_ else ""


def _normalise(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else vec
