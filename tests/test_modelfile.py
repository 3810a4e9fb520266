"""Tests for corral.store.modelfile: Ollama Modelfile parsing, typing, errors and round-trips."""

from __future__ import annotations

import logging

import pytest

from corral.store.modelfile import (
    DEPRECATED_PARAMETERS,
    OPTION_TYPES,
    Modelfile,
    ModelfileError,
    parse,
    render_modelfile,
)


def test_minimal_from() -> None:
    mf = parse("FROM llama3.2\n")
    assert mf == Modelfile(from_="llama3.2")
    assert mf.parameters == {} and mf.template is None and mf.system is None
    assert mf.adapters == [] and mf.license == [] and mf.messages == []


@pytest.mark.parametrize(
    "source",
    [
        "./models/model-q4_0.gguf",
        "/abs/path/Qwen2.5-0.5B/",
        "~/weights/llama",
        "hf.co/org/repo:Q4_K_M",
        "registry.example.com/ns/model:tag",
    ],
)
def test_from_keeps_the_string(source: str) -> None:
    assert parse(f"FROM {source}").from_ == source


def test_every_instruction_and_case_insensitivity() -> None:
    text = """# A Modelfile exercising everything
from llama3.1:8b
Parameter temperature 0.6
PARAMETER num_ctx 8192
parameter stop <|start_header_id|>
PARAMETER stop "<|eot_id|>"
TEMPLATE \"\"\"{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}\"\"\"
System You are a pirate.
ADAPTER ./lora.gguf
adapter ./lora2.gguf
LICENSE MIT
LICENSE \"\"\"Apache
2.0\"\"\"
MESSAGE user Is Toronto in Canada?
message Assistant yes
MESSAGE system be brief
MESSAGE tool {"ok": true}
DRAFT ./draft.gguf
RENDERER qwen3
PARSER qwen3
REQUIRES 0.14.0
"""
    mf = parse(text)
    assert mf.from_ == "llama3.1:8b"
    assert mf.parameters == {"temperature": 0.6, "num_ctx": 8192, "stop": ["<|start_header_id|>", "<|eot_id|>"]}
    assert mf.template == "{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}"
    assert mf.system == "You are a pirate."
    assert mf.adapters == ["./lora.gguf", "./lora2.gguf"]
    assert mf.license == ["MIT", "Apache\n2.0"]
    assert mf.messages == [
        {"role": "user", "content": "Is Toronto in Canada?"},
        {"role": "assistant", "content": "yes"},
        {"role": "system", "content": "be brief"},
        {"role": "tool", "content": '{"ok": true}'},
    ]
    assert (mf.draft, mf.renderer, mf.parser, mf.requires) == ("./draft.gguf", "qwen3", "qwen3", "0.14.0")


def test_comments_blank_lines_and_whitespace() -> None:
    text = "\ufeff\n   # leading comment\n\n\tFROM   base  \n# SYSTEM not this\nSYSTEM  keep # this too  \n"
    mf = parse(text)
    assert mf.from_ == "base"
    assert mf.system == "keep # this too"


def test_crlf_line_endings() -> None:
    mf = parse('FROM base\r\nTEMPLATE """a\r\nb"""\r\nSYSTEM hi\r\n')
    assert mf.template == "a\nb"
    assert mf.system == "hi"


def test_triple_quoted_is_verbatim() -> None:
    text = 'FROM m\nTEMPLATE """\n{{- range .Messages }}\n  "quoted" \\n kept\n{{ end }}\n"""\n'
    assert parse(text).template == '\n{{- range .Messages }}\n  "quoted" \\n kept\n{{ end }}\n'


def test_triple_quoted_with_quote_at_the_end_and_inline_triple_quotes() -> None:
    # The block ends at the first """ that finishes its line (Ollama's rule).
    assert parse('FROM m\nSYSTEM """say "hi""""\n').system == 'say "hi"'
    assert parse('FROM m\nSYSTEM """a""" b"""\n').system == 'a""" b'
    assert parse('FROM m\nSYSTEM """"""\n').system == ""


def test_double_quoted_values() -> None:
    assert parse('FROM m\nSYSTEM "  padded  "').system == "  padded  "
    assert parse('FROM m\nSYSTEM "say \\"hi\\" \\\\ done"').system == 'say "hi" \\ done'
    # Any other backslash is kept as written, as Ollama does.
    assert parse('FROM m\nPARAMETER stop "\\n\\n"').parameters["stop"] == ["\\n\\n"]
    assert parse('FROM m\nSYSTEM "line one\nline two"\nPARAMETER seed 1').system == "line one\nline two"
    assert parse('FROM m\nSYSTEM ""').system == ""


def test_unquoted_value_keeps_inner_quotes_and_spaces() -> None:
    mf = parse('FROM m\nSYSTEM You say "hello"   and  wave\n')
    assert mf.system == 'You say "hello"   and  wave'


def test_last_template_and_system_win() -> None:
    mf = parse("FROM a\nFROM b\nSYSTEM one\nSYSTEM two\nTEMPLATE x\nTEMPLATE y\n")
    assert (mf.from_, mf.system, mf.template) == ("b", "two", "y")


def test_parameter_typing_covers_every_option() -> None:
    samples = {int: ("42", 42), float: ("0.25", 0.25), bool: ("true", True), list: ("<end>", ["<end>"])}
    lines = ["FROM m"] + [f"PARAMETER {name} {samples[typ][0]}" for name, typ in OPTION_TYPES.items()]
    params = parse("\n".join(lines)).parameters
    for name, typ in OPTION_TYPES.items():
        assert params[name] == samples[typ][1], name
        assert type(params[name]) is typ, name


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("temperature 1", 1.0),
        ("temperature -0.5", -0.5),
        ("temperature 1e-3", 0.001),
        ("top_p .9", 0.9),
        ("num_predict -1", -1),
        ("seed +7", 7),
        ("use_mmap FALSE", False),
        ("use_mmap 1", True),
        ("use_mmap f", False),
    ],
)
def test_parameter_value_forms(line: str, expected: object) -> None:
    name = line.split()[0]
    value = parse(f"FROM m\nPARAMETER {line}").parameters[name]
    assert value == expected and type(value) is type(expected)


def test_parameter_names_are_case_insensitive() -> None:
    assert parse("FROM m\nPARAMETER Temperature 0.1").parameters == {"temperature": 0.1}


def test_deprecated_parameters_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert "mirostat" in DEPRECATED_PARAMETERS
    with caplog.at_level(logging.WARNING, logger="corral.store.modelfile"):
        mf = parse("FROM m\nPARAMETER mirostat 2\nPARAMETER temperature 0.1\n")
    assert mf.parameters == {"temperature": 0.1}
    assert "mirostat" in caplog.text


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("FROM m\nSYSTEM hi\nFORM x\n", 3, 'unknown instruction "FORM"'),
        ("# c\nFROM: llama3\n", 2, 'unknown instruction "FROM:"'),
        ("SYSTEM hi\n", 0, "no FROM line"),
        ("# only comments\n\n", 0, "no FROM line"),
        ("FROM m\n\nPARAMETER temprature 0.5\n", 3, 'unknown parameter "temprature"'),
        ("FROM m\nPARAMETER temperature abc\n", 2, 'invalid value for parameter "temperature"'),
        ("FROM m\nPARAMETER num_ctx 4096.5\n", 2, 'invalid value for parameter "num_ctx"'),
        ("FROM m\nPARAMETER use_mmap maybe\n", 2, 'invalid value for parameter "use_mmap"'),
        ("FROM m\nPARAMETER seed\n", 2, "PARAMETER needs a name and a value"),
        ('FROM m\nSYSTEM ok\nTEMPLATE """{{ .Prompt }}\n\nmore\n', 3, 'unterminated """'),
        ('FROM m\nSYSTEM "never closed\n', 2, "unterminated quoted string"),
        ('FROM m\nSYSTEM "closed" trailing\n', 2, "unexpected text after the closing quote"),
        ("FROM m\nMESSAGE bot hello\n", 2, 'invalid MESSAGE role "bot"'),
        ("FROM m\nMESSAGE user\n", 2, "MESSAGE needs a role and a content"),
        ("FROM m\nSYSTEM\n", 2, "missing value for SYSTEM"),
        ("FROM\n", 1, "missing value for FROM"),
        ('FROM ""\n', 1, "missing value for FROM"),
    ],
)
def test_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ModelfileError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, ModelfileError) and isinstance(err, ValueError)
    assert err.line == line
    assert fragment in str(err)
    if line:
        assert str(err).startswith(f"line {line}: ")


def test_error_line_counts_multiline_values() -> None:
    text = 'FROM m\nTEMPLATE """a\nb\nc"""\nSYSTEM "x\ny"\nBOGUS 1\n'
    with pytest.raises(ModelfileError, match=r'^line 7: unknown instruction "BOGUS"'):
        parse(text)


def test_render_layout() -> None:
    text = render_modelfile(
        from_="/models/blobs/sha256-abc",
        parameters={"temperature": 0.7, "stop": ["<|im_end|>", "<|im_start|>"]},
        template="{{ .Prompt }}",
        system="Be nice.",
        license=["MIT"],
        messages=[{"role": "user", "content": "hi"}],
        adapters=["/models/blobs/sha256-def"],
        name="qwen2.5:0.5b",
    )
    assert text == (
        '# Modelfile generated by "corral show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM qwen2.5:0.5b\n"
        "\n"
        "FROM /models/blobs/sha256-abc\n"
        "ADAPTER /models/blobs/sha256-def\n"
        "TEMPLATE {{ .Prompt }}\n"
        "SYSTEM Be nice.\n"
        "PARAMETER temperature 0.7\n"
        "PARAMETER stop <|im_end|>\n"
        "PARAMETER stop <|im_start|>\n"
        "LICENSE MIT\n"
        "MESSAGE user hi\n"
    )


def test_render_accepts_a_single_license_string_and_no_optionals() -> None:
    text = render_modelfile("base", license="MIT\nfull text")
    assert 'LICENSE """MIT\nfull text"""' in text
    assert parse(text).license == ["MIT\nfull text"]


ROUND_TRIP_CASES = [
    Modelfile(from_="llama3.2"),
    Modelfile(
        from_="./path with spaces/model.gguf",
        parameters={
            "num_ctx": 4096,
            "temperature": 0.8,
            "top_p": 1.0,
            "min_p": 1e-05,
            "use_mmap": False,
            "seed": -1,
            "stop": ["<|eot_id|>", " ", "User:", '"quoted"', "a\nb"],
        },
        template="{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "\n{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        system="  leading and trailing  ",
        adapters=["/a.gguf"],
        license=["MIT", 'Multi\nline with """triple""" quotes and a \\ backslash', 'ends with quote\n"'],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": '"hello"\nthere'},
            {"role": "tool", "content": ""},
        ],
        draft="./d.gguf",
        renderer="r",
        parser="p",
        requires="0.12.1",
    ),
    Modelfile(from_="m", template="", system='"starts with a quote', license=['"""'], parameters={"stop": ["#"]}),
]


@pytest.mark.parametrize("mf", ROUND_TRIP_CASES)
def test_round_trip(mf: Modelfile) -> None:
    text = mf.render(name="some:tag")
    assert parse(text) == mf
    assert (
        parse(
            render_modelfile(
                mf.from_,
                mf.parameters,
                mf.template,
                mf.system,
                mf.license,
                mf.messages,
                mf.adapters,
                draft=mf.draft,
                renderer=mf.renderer,
                parser=mf.parser,
                requires=mf.requires,
            )
        )
        == mf
    )


def test_round_trip_of_a_parsed_file() -> None:
    original = parse('FROM qwen2.5\nPARAMETER stop "<|im_end|>"\nSYSTEM """You are\n  helpful."""\n')
    assert parse(original.render()) == original
