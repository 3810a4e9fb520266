"""What the serving process keeps resident: the serve path must stay free of numpy.

numpy costs ~15 MB of RSS in every server (bench/RESULTS.md, peak-RSS
target), and nothing on the request path needs it: GGUF headers are read by
corral.store.gguf_reader, and the architecture table is loaded from the gguf
package's constants module alone.
"""

from __future__ import annotations

import subprocess
import sys

from corral.engine.llamacpp import _KV_ELEMENT_BYTES, _supported_archs, kv_bytes_per_token
from corral.store.starters import smollm2_gguf


def test_serve_path_imports_no_numpy() -> None:
    code = (
        "import sys\n"
        "import corral.cli, corral.server.app, corral.server.openai.routes, corral.backend.local\n"
        "from corral.engine.llamacpp import _supported_archs\n"
        "from corral.store.gguf_meta import read_gguf\n"
        "from corral.store.starters import smollm2_gguf\n"
        "assert 'llama' in _supported_archs()\n"
        "read_gguf(smollm2_gguf())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'gguf')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_supported_archs_match_the_gguf_package() -> None:
    import gguf

    assert _supported_archs() == frozenset(gguf.MODEL_ARCH_NAMES.values())


def test_kv_bytes_per_token_by_cache_type() -> None:
    path = smollm2_gguf()
    assert path is not None
    f16 = kv_bytes_per_token(path, "f16")
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x (K and V) x 2 bytes.
    assert f16 == 30 * 3 * 64 * 2 * 2
    assert kv_bytes_per_token(path, "q8_0") == int(f16 / 2 * _KV_ELEMENT_BYTES["q8_0"])
    assert kv_bytes_per_token(path, "q4_0") < kv_bytes_per_token(path, "q8_0") < f16
