"""Build tiny GGUF files with the ``gguf`` package for edge-case tests.

``tiny_llama`` writes a random 2-layer llama with a byte-level BPE vocabulary
(256 byte tokens plus BOS/EOS) that llama.cpp loads and runs in milliseconds.
``unknown_arch`` writes a well-formed GGUF whose architecture llama.cpp does
not know.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def _byte_tokens() -> list[str]:
    # GPT-2's byte-to-unicode table, so every byte is one printable token.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tiny_llama(
    path: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 128,
    ctx: int = 256,
    seed: int = 0,
    chat_template: str | None = None,
    fim: bool = False,
) -> Path:
    rng = np.random.default_rng(seed)
    tokens = _byte_tokens() + ["<s>", "</s>"] + (["<fim_prefix>", "<fim_suffix>", "<fim_middle>"] if fim else [])
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * (len(tokens) - 256))
    if fim:
        w.add_uint32("tokenizer.ggml.fim_pre_token_id", 258)
        w.add_uint32("tokenizer.ggml.fim_suf_token_id", 259)
        w.add_uint32("tokenizer.ggml.fim_mid_token_id", 260)
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(256)
    w.add_eos_token_id(257)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)

    def t(name: str, *shape: int, scale: float = 0.02) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    t("token_embd.weight", n_vocab, n_embd, scale=1.0)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    t("output.weight", n_vocab, n_embd, scale=0.5)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t(f"blk.{i}.{name}.weight", n_embd, n_embd)
        t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def unknown_arch(path: Path, arch: str = "frobnicator") -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("mystery")
    w.add_context_length(128)
    w.add_file_type(0)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
