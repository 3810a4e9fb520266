"""Tokenizer metadata for converted models, read from Hugging Face files without ``transformers``.

Owns: turning ``tokenizer.json`` / ``vocab.txt`` / ``tokenizer_config.json`` into
the ``tokenizer.ggml.*`` GGUF keys llama.cpp expects:

* WordPiece (BERT) → ``bert`` model with llama.cpp's "phantom space" token list;
* byte-level BPE → ``gpt2`` model with merges and a pre-tokenizer name guessed
  from the split regex (llama.cpp guesses it from a tokenisation hash, which
  would need ``transformers``);
* SentencePiece-style BPE with byte fallback (Llama 2 / Mistral tokenizer.json)
  → ``llama`` model with scores derived from the merge ranks (best effort).

Special token ids, add_bos/add_eos and the chat template come from gguf-py's
``SpecialVocab``, exactly as llama.cpp's converter does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, SpecialVocab, TokenType

from corral.convert.errors import ConversionError

log = logging.getLogger(__name__)

# gguf-py's SpecialVocab also looks for "cls", but GGUF has no key for it (llama.cpp uses BOS).
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "mask")


@dataclass
class VocabData:
    """Everything the writer needs for the ``tokenizer.ggml.*`` keys."""

    model: str
    pre: str
    tokens: list[str]
    toktypes: list[int]
    scores: list[float] | None = None
    extra_bool: dict[str, bool] = field(default_factory=dict)
    special: SpecialVocab | None = None

    def apply(self, w: GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.toktypes)
        for key, value in self.extra_bool.items():
            w.add_bool(key, value)
        if self.special is not None:
            self.special.add_to_gguf(w, quiet=True)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read {path.name}: {exc}") from exc


def _looks_special(text: str) -> bool:
    # Same heuristic as convert_hf_to_gguf.py's does_token_look_special.
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _ordered_vocab(
    vocab: dict[str, int], added: list[dict[str, Any]], vocab_size: int | None, *, spm: bool = False
) -> tuple[list[str], list[int]]:
    """Token list and types ordered by id, padded to ``vocab_size`` with ``[PADn]`` tokens."""
    by_id: dict[int, str] = {int(i): t for t, i in vocab.items()}
    added_types: dict[int, int] = {}
    for tok in added:
        tid, content = int(tok["id"]), tok["content"]
        by_id[tid] = content
        if tok.get("special") or _looks_special(content):
            added_types[tid] = TokenType.CONTROL
        else:
            added_types[tid] = TokenType.USER_DEFINED
    n = max(by_id) + 1
    if vocab_size is not None:
        if vocab_size < n:
            raise ConversionError(f"tokenizer has {n} tokens but config.json vocab_size is {vocab_size}")
        n = vocab_size
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added_types:
            if added_types[i] == TokenType.USER_DEFINED and spm:
                text = text.replace("\u2581", " ")
            tokens.append(text)
            types.append(added_types[i])
        else:
            tokens.append(text)
            types.append(TokenType.NORMAL)
    return tokens, types


# ----------------------------------------------------------------------------- BERT


def wordpiece_vocab(folder: Path, config: dict[str, Any]) -> VocabData:
    """WordPiece vocabulary for BERT-style encoders (``tokenizer.json`` or ``vocab.txt``)."""
    tj_path, vt_path = folder / "tokenizer.json", folder / "vocab.txt"
    added: list[dict[str, Any]] = []
    if tj_path.is_file():
        tj = _load_json(tj_path)
        model = tj.get("model") or {}
        if model.get("type") != "WordPiece":
            raise ConversionError(f"BERT tokenizer.json model type {model.get('type')!r} is not WordPiece")
        vocab = dict(model["vocab"])
        added = list(tj.get("added_tokens") or [])
    elif vt_path.is_file():
        lines = vt_path.read_text(encoding="utf-8").splitlines()
        vocab = {tok: i for i, tok in enumerate(lines)}
        cfg_path = folder / "tokenizer_config.json"
        tc = _load_json(cfg_path) if cfg_path.is_file() else {}
        names = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        specials = {tc.get(k) for k in names} | {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
        added = [{"id": vocab[t], "content": t, "special": True} for t in specials if t in vocab]
    else:
        raise ConversionError(f"{folder} has neither tokenizer.json nor vocab.txt")
    tokens, types = _ordered_vocab(vocab, added, config.get("vocab_size"))

    def phantom(tok: str, typ: int) -> str:
        # llama.cpp's WPM tokenizer wants word-initial pieces prefixed with U+2581.
        if typ == TokenType.CONTROL:
            return tok
        if tok.startswith("##"):
            return tok[2:]
        return "\u2581" + tok

    tokens = [phantom(t, k) for t, k in zip(tokens, types, strict=False)]
    if len(set(tokens)) != len(tokens):
        raise ConversionError("WordPiece vocabulary has duplicate tokens after conversion")
    special = SpecialVocab(folder, special_token_types=_SPECIAL_TYPES, n_vocab=len(tokens))
    return VocabData(model="bert", pre="default", tokens=tokens, toktypes=types, special=special)


# ----------------------------------------------------------------------- Llama family


def _split_regexes(pre: Any) -> list[str]:
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        out: list[str] = []
        for p in pre.get("pretokenizers") or []:
            out += _split_regexes(p)
        return out
    if pre.get("type") == "Split":
        pattern = pre.get("pattern") or {}
        return [str(pattern.get("Regex") or pattern.get("String") or "")]
    return []


def _pre_types(pre: Any) -> list[str]:
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        return [t for p in pre.get("pretokenizers") or [] for t in _pre_types(p)]
    return [str(pre.get("type"))] + (["individual_digits"] if pre.get("individual_digits") else [])


def guess_bpe_pre(tj: dict[str, Any], config: dict[str, Any], tok_config: dict[str, Any]) -> str:
    """Name of llama.cpp's pre-tokenizer matching this byte-level BPE tokenizer.json."""
    pre = tj.get("pre_tokenizer")
    regexes = "".join(_split_regexes(pre))
    types = _pre_types(pre)
    if regexes:
        if r"\p{Lu}" in regexes:
            return "gpt-4o" if "(?i:'s" in regexes else "tekken"
        if r"\p{N}{1,3}" in regexes:
            return "llama-bpe"
        if "(?i:'s" in regexes and r"\p{N}|" in regexes:
            return "qwen2"
    elif "Digits" in types and "individual_digits" in types and "ByteLevel" in types:
        clean = tok_config.get("clean_up_tokenization_spaces", True)
        return "starcoder" if clean else "smollm"
    elif types == ["ByteLevel"]:
        return "gpt-2"
    if config.get("model_type") == "qwen2":
        return "qwen2"
    log.warning("unrecognised BPE pre-tokenizer %s; using llama.cpp's 'default'", types or regexes)
    return "default"


def llama_family_vocab(folder: Path, config: dict[str, Any]) -> VocabData:
    """Vocabulary for decoder-only models from ``tokenizer.json`` (+ ``tokenizer_config.json``)."""
    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        if (folder / "tokenizer.model").is_file():
            raise ConversionError(
                "only tokenizer.json is supported; this folder has just a SentencePiece tokenizer.model"
            )
        raise ConversionError(f"missing tokenizer.json in {folder}")
    tj = _load_json(tj_path)
    tc_path = folder / "tokenizer_config.json"
    tok_config = _load_json(tc_path) if tc_path.is_file() else {}
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(f"unsupported tokenizer.json model type {model.get('type')!r} (only BPE)")
    vocab = dict(model.get("vocab") or {})
    if not vocab:
        raise ConversionError("tokenizer.json has an empty vocabulary")
    added = list(tj.get("added_tokens") or [])
    n_vocab = config.get("vocab_size")
    if model.get("byte_fallback"):
        return _spm_vocab(folder, tj, vocab, added, n_vocab)
    tokens, types = _ordered_vocab(vocab, added, n_vocab)
    special = SpecialVocab(folder, load_merges=True, special_token_types=_SPECIAL_TYPES, n_vocab=len(tokens))
    if not special.merges:
        raise ConversionError("BPE tokenizer.json has no merges")
    pre = guess_bpe_pre(tj, config, tok_config)
    return VocabData(model="gpt2", pre=pre, tokens=tokens, toktypes=types, special=special)


def _spm_vocab(
    folder: Path, tj: dict[str, Any], vocab: dict[str, int], added: list[dict[str, Any]], n_vocab: int | None
) -> VocabData:
    """SentencePiece-style BPE (byte fallback, U+2581 spaces) → llama.cpp ``llama`` vocab."""
    tokens, types = _ordered_vocab(vocab, added, n_vocab, spm=True)
    unk = (tj.get("model") or {}).get("unk_token")
    merges = (tj.get("model") or {}).get("merges") or []
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    scores: list[float] = []
    for i, text in enumerate(tokens):
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = TokenType.BYTE
        elif unk is not None and text == unk:
            types[i] = TokenType.UNKNOWN
        if types[i] != TokenType.NORMAL:
            scores.append(0.0)
        else:
            # llama.cpp's SPM tokenizer merges the highest-scoring pair first: use -merge rank.
            scores.append(-float(rank.get(text, len(merges) + i)))
    normalizer = json.dumps(tj.get("normalizer") or {}) + json.dumps(tj.get("pre_tokenizer") or {})
    add_prefix = (
        '"Prepend"' in normalizer
        or '"prepend_scheme": "first"' in normalizer
        or ('"Metaspace"' in normalizer and '"prepend_scheme": "never"' not in normalizer)
    )
    special = SpecialVocab(folder, special_token_types=_SPECIAL_TYPES, n_vocab=len(tokens))
    return VocabData(
        model="llama",
        pre="default",
        tokens=tokens,
        toktypes=types,
        scores=scores,
        extra_bool={"tokenizer.ggml.add_space_prefix": add_prefix},
        special=special,
    )
