"""LocalBackend: the :class:`~corral.backend.base.Backend` over the local store and llama.cpp.

One internal :class:`ChatCall` / :class:`GenerateCall` goes in; a stream of
:class:`Piece` events and one :class:`Final` comes out. This module resolves
the model from the store, checks its capabilities, renders the prompt, fits
it into the context window, leases a slot from the scheduler and
post-processes output (thinking, tool calls). It also answers the catalog
(models, show, running) from the store and the scheduler.

As Ollama: ``num_ctx`` is clamped to the model's trained context; a prompt
longer than the context keeps its first ``num_keep`` tokens and its end
(Ollama's context-shift truncation), for a chat after the oldest turns have
been dropped, and a huge prompt is cut down to about what it can keep before
it is tokenized, so a 50 MB prompt costs no more than a few times its own
size in memory; ``load_duration`` runs from the request's arrival until a
runner slot is ready (scheduling included), so it is never 0.
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
from corral.backend.schema import check_schema
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

# A token is assumed to span at most this many characters when a huge prompt is cut down before tokenizing:
# the text kept is about this many times the tokens that can be kept.
CHARS_PER_TOKEN_BOUND = 32
_TRUNCATE_FURTHER = "input exceeds maximum context length and cannot be truncated further"


def _format_schema(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "object"}
    if isinstance(fmt, dict):
        check_schema(fmt)
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
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": _closed(params) if isinstance(params, dict) and params else {"type": "object"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
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

    def __init__(
        self,
        think: bool | None,
        tools: ToolCallParser | None,
        start: float,
        ready: float,
        queue_seconds: float,
        model_name: str,
    ) -> None:
        self.splitter = ThinkingSplitter() if think else None
        self.tools = tools
        self.start = start
        self.ready = ready
        self.queue_seconds = queue_seconds
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
        # Work done takes time: a duration the engine rounded to 0 is reported as 1 ns, never 0.
        return Final(
            done_reason=event.done_reason,
            model=self.model_name,
            total_ns=max(1, int((time.monotonic() - self.start) * 1e9)),
            load_ns=max(1, int((self.ready - self.start) * 1e9)),
            queue_ns=int(self.queue_seconds * 1e9),
            first_token_at=self.first_token_at,
            prompt_eval_count=event.prompt_tokens,
            prompt_eval_ns=max(1, event.prompt_eval_ns) if event.prompt_tokens else event.prompt_eval_ns,
            eval_count=event.eval_count,
            eval_ns=max(1, event.eval_ns) if event.eval_count else event.eval_ns,
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
        num_ctx = max(256, int(options.get("num_ctx") or self.settings.context_length))
        trained = record.info.context_length
        if 0 < trained < num_ctx:
            if options.get("num_ctx"):
                log.warning(
                    "requested context size too large for model: num_ctx %d, n_ctx_train %d",
                    options["num_ctx"],
                    trained,
                )
            num_ctx = trained  # as Ollama: never a KV cache beyond what the model was trained for
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

    def _chat_renderer(
        self, record: ModelRecord, call: ChatCall, think: bool | None
    ) -> Callable[[list[dict[str, Any]]], str]:
        bos, eos = self._bos_eos(record)

        def render(msgs: list[dict[str, Any]]) -> str:
            return render_chat(record, msgs, tools=call.tools, think=think, bos=bos, eos=eos)

        return render

    async def chat(self, call: ChatCall) -> AsyncIterator[Piece | Final]:
        start = call.arrived if call.arrived is not None else time.monotonic()
        record, think, opts, spec = self._chat_setup(call)
        schema = _format_schema(call.format)
        if call.force_tool is not None:  # checked even when an explicit format takes precedence
            forced = _tool_call_schema(call.tools, call.force_tool)
            schema = forced if schema is None else schema
        async with self.scheduler.acquire(record.name, record.digest, spec, call.keep_alive) as lease:
            ready = time.monotonic()
            _report_slot(call, lease)
            render = self._chat_renderer(record, call, think)
            prompt = await self._fit_chat(lease, list(call.messages), render, spec.num_ctx)
            # Even the latest turn alone may not fit: then the prompt is truncated as /api/generate's is.
            parts = await self._fit_tokens(lease, [prompt], spec.num_ctx, int(opts.get("num_keep", 4)))
            request = CompletionRequest(
                parts, opts, json_schema=schema, n_probs=_top(call), want_logprobs=call.logprobs
            )
            names = {t.get("function", {}).get("name") for t in call.tools or []} or None
            shape = _Shaper(
                think, ToolCallParser(names) if call.tools else None, start, ready, lease.queue_seconds, record.name
            )
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
        start = call.arrived if call.arrived is not None else time.monotonic()
        record = self.record(call.model)
        think = self._check(record, call)
        opts = self.options_for(record, call.options)
        schema = _format_schema(call.format)
        spec = self.load_spec(record, opts)
        if call.suffix and not call.raw:
            record.require("insert")
        async with self.scheduler.acquire(record.name, record.digest, spec, call.keep_alive) as lease:
            ready = time.monotonic()
            _report_slot(call, lease)
            bos, eos = self._bos_eos(record)
            parts: list[int | str] = list(call.context or [])
            if call.suffix and not call.raw and record.info.fim is not None and not (call.template or record.template):
                pre, suf, mid = record.info.fim
                parts += [pre, call.prompt, suf, call.suffix, mid]
            elif call.raw:
                parts.append(call.prompt)
            else:
                parts.append(
                    render_generate(
                        record,
                        call.prompt,
                        system=call.system,
                        suffix=call.suffix,
                        template=call.template,
                        think=think,
                        bos=bos,
                        eos=eos,
                    )
                )
            parts = await self._fit_tokens(lease, parts, spec.num_ctx, int(opts.get("num_keep", 4)))
            request = CompletionRequest(
                parts, opts, json_schema=schema, n_probs=_top(call), want_logprobs=call.logprobs
            )
            output: list[str] = []
            shape = _Shaper(think, None, start, ready, lease.queue_seconds, record.name)
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

    async def _count_tokens(self, lease: Lease, text: str, num_ctx: int) -> int:
        """Tokens in ``text``; for a text too long to fit whatever its tokens, a bound, without tokenizing it."""
        if len(text) > num_ctx * CHARS_PER_TOKEN_BOUND:
            return num_ctx * CHARS_PER_TOKEN_BOUND
        return len(await lease.model.tokenize(text))

    async def _fit_chat(self, lease: Lease, messages: list[dict[str, Any]], render: Any, num_ctx: int) -> str:
        prompt = render(messages)
        if len(prompt) < num_ctx and len(prompt.encode()) < num_ctx:
            return str(prompt)
        # Drop the oldest non-system messages until the prompt fits, always
        # keeping the latest message, as Ollama's chatPrompt does.
        while True:
            n = await self._count_tokens(lease, prompt, num_ctx)
            droppable = [i for i, m in enumerate(messages[:-1]) if m.get("role") != "system"]
            if n < num_ctx - 1 or not droppable:
                break
            messages = messages[: droppable[0]] + messages[droppable[0] + 1 :]
            prompt = render(messages)
        return str(prompt)

    async def _fit_tokens(self, lease: Lease, parts: list[int | str], num_ctx: int, num_keep: int) -> list[int | str]:
        """Ollama's prompt truncation (llm/llama_server.go): a prompt of more than ``num_ctx - 1`` tokens keeps
        its first ``num_keep`` tokens (plus BOS) and the end that fits ``num_ctx - max((num_ctx - keep) // 2, 1)``.

        A part far longer than that is cut to its head and tail before it is tokenized (see
        :data:`CHARS_PER_TOKEN_BOUND`), so the cost follows what is kept, not what was sent.
        """
        small = all(isinstance(p, int) or len(p) < num_ctx for p in parts)
        if small and sum(1 if isinstance(p, int) else len(p.encode()) for p in parts) < num_ctx:
            return parts
        full_limit = num_ctx - 1
        specials = 0
        if parts and isinstance(parts[0], str):
            specials = len(await lease.model.tokenize("", add_special=True))  # BOS the engine would add
        keep = min((num_keep if num_keep >= 0 else full_limit) + specials, full_limit)
        head_chars = (keep + 1) * CHARS_PER_TOKEN_BOUND
        tail_chars = num_ctx * CHARS_PER_TOKEN_BOUND
        tokens: list[int] = []
        cut = False
        for i, part in enumerate(parts):
            if isinstance(part, int):
                tokens.append(part)
            elif len(part) > head_chars + tail_chars:
                cut = True
                tokens.extend(await lease.model.tokenize(part[:head_chars], add_special=i == 0))
                tokens.extend(await lease.model.tokenize(part[-tail_chars:]))
            else:
                tokens.extend(await lease.model.tokenize(part, add_special=i == 0))
        if len(tokens) <= full_limit and not cut:
            return list(tokens)
        limit = num_ctx - max((num_ctx - keep) // 2, 1)
        if len(tokens) <= limit:
            return list(tokens)
        log.warning(
            "truncating input prompt: limit %d, prompt %d%s tokens, keep %d, num_ctx %d",
            limit,
            len(tokens),
            "+ (cut before tokenizing)" if cut else "",
            keep,
            num_ctx,
        )
        return list(tokens[:keep] + tokens[len(tokens) - (limit - keep) :])

    # ---- embeddings -------------------------------------------------------------------
    async def embed(self, call: EmbedCall) -> Embeddings:
        """Ollama's /api/embed: each input fits ``num_ctx`` (the model's context, by default) with the
        special tokens it needs, cut at the end when ``truncate`` (the default) or refused when not;
        ``prompt_eval_count`` counts the tokens actually embedded. Vectors are L2-normalised (again after
        cutting to ``dimensions``) unless ``normalize`` is off (the legacy /api/embeddings)."""
        start = call.arrived if call.arrived is not None else time.monotonic()
        record = self.record(call.model)
        asked = (call.options or {}).get("num_ctx")
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked < 1:
            raise BadRequest(_TRUNCATE_FURTHER, param="options.num_ctx")
        opts = self.options_for(record, call.options)
        spec = self.load_spec(record, opts)
        async with self.scheduler.acquire(record.name, record.digest, spec, call.keep_alive) as lease:
            load_ns = max(1, int((time.monotonic() - start) * 1e9))
            limit = min(int(opts.get("num_ctx") or spec.num_ctx), spec.num_ctx, spec.num_batch)
            specials = await lease.model.tokenize("", special=False, add_special=True)
            prepared: list[list[int] | str] = []
            for item in call.inputs:
                if isinstance(item, list):
                    tokens = list(item)
                    if len(tokens) > limit:
                        if not call.truncate:
                            raise BadRequest("the input length exceeds the context length", param="input")
                        tokens = tokens[:limit]
                else:
                    tokens = await self._embed_tokens(lease, item, specials, limit, call.truncate)
                prepared.append(tokens if tokens else (item if isinstance(item, str) else ""))
            vectors, _ = await lease.model.embed(prepared, normalize=call.normalize) if prepared else ([], 0)
            n_tokens = sum(len(t) for t in prepared if isinstance(t, list))
            queue_ns = int(lease.queue_seconds * 1e9)
        if call.dimensions is not None:
            vectors = [_normalise(v[: call.dimensions]) for v in vectors]
        return Embeddings(vectors, n_tokens, load_ns, max(1, int((time.monotonic() - start) * 1e9)), queue_ns)

    async def _embed_tokens(
        self, lease: Lease, text: str, specials: list[int], limit: int, truncate: bool
    ) -> list[int]:
        """One input's tokens, fitted to ``limit`` keeping the leading and trailing special tokens."""
        bound = (limit + 1) * CHARS_PER_TOKEN_BOUND
        tokens = await lease.model.tokenize(
            text[:bound] if len(text) > bound else text, special=False, add_special=True
        )
        if len(text) > bound and len(tokens) <= limit:  # tokens longer than the bound assumes: no shortcut
            tokens = await lease.model.tokenize(text, special=False, add_special=True)
        head, tail = _special_split(tokens, specials)
        if limit < head + tail or limit < 1:
            raise BadRequest(_TRUNCATE_FURTHER, param="options.num_ctx")
        if len(tokens) <= limit:
            return tokens
        if not truncate:
            raise BadRequest("the input length exceeds the context length", param="input")
        content = tokens[head : len(tokens) - tail]
        return tokens[:head] + content[: limit - head - tail] + tokens[len(tokens) - tail :]

    # ---- catalog ------------------------------------------------------------------------
    async def unload(self, model: str) -> bool:
        return await self.scheduler.unload(model)

    def _summary(self, local: LocalModel) -> ModelSummary:
        try:
            details = self.record(local.name.display).info.details(parent=_parent(local))
        except Exception:  # a model whose weights can't be read still lists
            details = {
                "parent_model": "",
                "format": "gguf",
                "family": "",
                "families": None,
                "parameter_size": "",
                "quantization_level": "",
            }
        return ModelSummary(
            local.name.display, local.name.namespace, local.modified_at, local.size, local.digest, details
        )

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
            from_=str(record.gguf_path),
            parameters=params,
            template=record.template,
            system=record.system,
            license=record.license,
            messages=record.messages,
            adapters=[str(a) for a in record.adapters],
        )
        return ModelInfo(
            name=record.name,
            modelfile=modelfile,
            parameters=params,
            template=record.effective_template or "",
            system=record.system,
            license=list(record.license),
            details=record.info.details(parent=_parent(record.local)),
            messages=list(record.messages),
            model_info=record.info.model_info(verbose=verbose),
            capabilities=record.capabilities,
            modified_at=record.local.modified_at,
        )

    async def running(self) -> list[RunningModel]:
        out = []
        for runner in self.scheduler.running():
            try:
                details = self.record(runner.key).info.details()
            except Exception:  # removed from the store while loaded
                details = {}
            out.append(
                RunningModel(
                    runner.key,
                    runner.digest,
                    runner.model.size_bytes,
                    0,
                    details,
                    runner.expires_at,
                    runner.spec.num_ctx,
                )
            )
        return out

    async def close(self) -> None:
        await self.scheduler.close()


def _report_slot(call: Common, lease: Lease) -> None:
    """Tell the caller, as soon as the slot is held, how long it queued and loaded (see ``Common.report``)."""
    if call.report is not None:
        call.report("queue", lease.queue_seconds * 1000)
        call.report("load", lease.load_seconds * 1000)


def _special_split(tokens: list[int], specials: list[int]) -> tuple[int, int]:
    """How many of the tokenizer's special tokens lead ``tokens`` and how many trail it
    ([CLS] ... [SEP] for BERT, BOS ... for llama); (0, 0) when they are not where expected."""
    for n in range(len(specials), -1, -1):
        trail = len(specials) - n
        if (
            tokens[:n] == specials[:n]
            and tokens[len(tokens) - trail :] == specials[n:]
            and len(tokens) >= len(specials)
        ):
            return n, trail
    return 0, 0


def _top(call: Common) -> int:
    """Alternatives asked per token: ``top_logprobs`` only counts with ``logprobs`` on, as in Ollama."""
    return call.top_logprobs if call.logprobs else 0


def _parent(local: LocalModel) -> str:
    layer = local.layer("model")
    return layer.from_ if layer is not None and layer.from_ else ""


def _normalise(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else vec
