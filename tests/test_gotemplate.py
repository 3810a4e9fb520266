"""Tests for corral.templates.gotemplate.template: Go text/template semantics and Ollama's prompt rendering.

Expected strings are written by hand from Go's documented text/template
behaviour and from each model family's prompt format (with the JSON layout
Ollama's Go templates produce: compact, struct fields in declaration order,
map keys sorted, ``<>&`` escaped).
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import pytest

from corral.templates.gotemplate.gojson import OrderedMap, go_json
from corral.templates.gotemplate.nodes import TemplateError
from corral.templates.gotemplate.prompt import render_chat_prompt
from corral.templates.gotemplate.template import Template

TEMPLATES = Path(__file__).parent / "data" / "templates"


def render(source: str, data: Any = None) -> str:
    return Template(source).execute({} if data is None else data)


def fixture(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- actions, fields, variables


def test_text_and_fields() -> None:
    data = {"Name": "Ada", "User": {"Address": {"City": "Paris"}}}
    assert render("plain text", data) == "plain text"
    assert render("Hi {{ .Name }} from {{ .User.Address.City }}!", data) == "Hi Ada from Paris!"
    assert render("{{ $.Name }}/{{ $.User.Address.City }}", data) == "Ada/Paris"
    assert render("{{ with .User }}{{ $.Name }} {{ .Address.City }}{{ end }}", data) == "Ada Paris"


def test_dot_and_dollar_print_the_data() -> None:
    assert render("{{ . }}|{{ $ }}", {"b": 2, "a": 1}) == "map[a:1 b:2]|map[a:1 b:2]"
    assert Template("{{ . }}").execute("just a string") == "just a string"  # type: ignore[arg-type]


def test_missing_key_prints_no_value_and_is_false() -> None:
    assert render("[{{ .Missing }}]") == "[<no value>]"
    assert render("[{{ .Missing.Deeper }}]") == "[<no value>]"
    assert render("{{ if .Missing }}yes{{ else }}no{{ end }}") == "no"
    assert render("[{{ .Nil }}]", {"Nil": None}) == "[<no value>]"
    # Passed to a function, a missing value is nil.
    assert render("{{ print .Missing }}") == "<nil>"


@dataclasses.dataclass
class Person:
    Name: str
    Age: int
    Tags: list[str]

    def Greet(self, whom: str) -> str:
        return f"{self.Name} greets {whom}"


def test_attributes_and_methods_on_objects() -> None:
    data = {"P": Person("Ann", 30, ["a", "b"])}
    assert render("{{ .P.Name }} is {{ .P.Age }} {{ .P.Tags }}", data) == "Ann is 30 [a b]"
    assert render('{{ .P.Greet "Bob" }}|{{ "Cy" | .P.Greet }}', data) == "Ann greets Bob|Ann greets Cy"
    assert render("{{ .P }}", data) == "{Ann 30 [a b]}"
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        render("{{ .P.Nope }}", data)
    with pytest.raises(TemplateError, match="can't evaluate field Len"):
        render("{{ .S.Len }}", {"S": "text"})


def test_variables_declare_assign_and_scope() -> None:
    assert render("{{ $x := 1 }}{{ $x }}{{ $x = 2 }}{{ $x }}") == "12"
    assert render("{{ $x := 1 }}{{ if true }}{{ $x = 5 }}{{ end }}{{ $x }}") == "5"
    assert render("{{ $x := 1 }}{{ if true }}{{ $x := 7 }}{{ $x }}{{ end }}{{ $x }}") == "71"
    assert render("{{ $m := .M }}{{ $m.K }}", {"M": {"K": "v"}}) == "v"
    with pytest.raises(TemplateError, match='undefined variable "\\$y"'):
        Template("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}")


# ---------------------------------------------------------------- whitespace and comments


def test_trim_markers_remove_all_adjacent_whitespace() -> None:
    assert render("a  \n\t {{- .X -}} \n\n  b", {"X": 1}) == "a1b"
    assert render("a \n{{- .X }} \nb", {"X": 1}) == "a1 \nb"
    assert render("a {{ .X -}}\n\n b", {"X": 1}) == "a 1b"
    assert render("line1\n{{- /* gone */ -}}\nline2") == "line1line2"
    # "{{-3}}" is the number -3, not a trim marker.
    assert render("a {{-3}} b") == "a -3 b"
    assert render("a {{- 3 }} b") == "a3 b"


def test_comments() -> None:
    assert render("a{{/* one */}}b{{/* multi\nline */}}c") == "abc"
    assert render("a {{- /* trimmed */}} b") == "a b"
    with pytest.raises(TemplateError, match="unclosed comment"):
        Template("x {{/* never closed }}")


# ---------------------------------------------------------------- control structures


def test_if_else_if_else() -> None:
    src = '{{ if eq .R "a" }}A{{ else if eq .R "b" }}B{{ else if .Other }}O{{ else }}Z{{ end }}'
    assert [render(src, {"R": r, "Other": o}) for r, o in (("a", 0), ("b", 0), ("c", 1), ("c", 0))] == [
        "A",
        "B",
        "O",
        "Z",
    ]


def test_with_and_else_with() -> None:
    assert render("{{ with .N }}[{{ . }}]{{ else }}none{{ end }}", {"N": "x"}) == "[x]"
    assert render("{{ with .N }}[{{ . }}]{{ else }}none{{ end }}", {"N": ""}) == "none"
    assert render("{{ with .A }}a{{ else with .B }}b={{ . }}{{ end }}", {"B": 2}) == "b=2"
    assert render("{{ with $v := .A }}{{ $v }}{{ end }}", {"A": "val"}) == "val"


def test_range_forms() -> None:
    data = {"L": ["a", "b", "c"], "M": {"b": 2, "a": 1, "c": 3}, "E": []}
    assert render("{{ range .L }}<{{ . }}>{{ end }}", data) == "<a><b><c>"
    assert render("{{ range $i, $e := .L }}{{ $i }}={{ $e }};{{ end }}", data) == "0=a;1=b;2=c;"
    assert render("{{ range $e := .L }}{{ $e }}{{ end }}", data) == "abc"  # one variable gets the element
    assert render("{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }}", data) == "a1b2c3"  # maps: sorted keys
    assert render("{{ range .E }}x{{ else }}empty{{ end }}", data) == "empty"
    assert render("{{ range .Missing }}x{{ else }}nothing{{ end }}", data) == "nothing"
    assert render("{{ range 3 }}{{ . }}{{ end }}") == "012"
    assert render("{{ range $i, $e := .L }}{{ $.L }}{{ end }}", {"L": [1]}) == "[1]"
    ordered = {"M": OrderedMap([("z", 1), ("a", 2)])}
    assert render("{{ range $k, $v := .M }}{{ $k }}{{ end }}", ordered) == "za"


def test_break_and_continue() -> None:
    src = (
        "{{ range $i, $e := .L }}{{ if eq $i 0 }}{{ continue }}{{ end }}"
        '{{ if eq $e "d" }}{{ break }}{{ end }}{{ $e }}{{ end }}'
    )
    assert render(src, {"L": ["a", "b", "c", "d", "e"]}) == "bc"
    with pytest.raises(TemplateError, match=r"\{\{break\}\} outside \{\{range\}\}"):
        Template("{{ if true }}{{ break }}{{ end }}")
    with pytest.raises(TemplateError, match=r"\{\{continue\}\} outside \{\{range\}\}"):
        Template("{{ range .L }}{{ else }}{{ continue }}{{ end }}")


def test_range_variables_are_fresh_each_iteration() -> None:
    src = "{{ range .L }}{{ $seen := . }}{{ $seen }}{{ end }}"
    assert render(src, {"L": [1, 2]}) == "12"


# ---------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("{{ and 1 0 2 }}", "0"),
        ("{{ and 1 2 3 }}", "3"),
        ('{{ or 0 "" }}', ""),
        ('{{ or .Missing "default" }}', "default"),
        ("{{ or 0 7 9 }}", "7"),
        ("{{ and false (index .L 99) }}", "false"),  # short-circuit: index never runs
        ("{{ or true (index .L 99) }}", "true"),
        ('{{ not 0 }} {{ not "x" }} {{ not .L }}', "true false false"),
        ('{{ eq 1 1 }} {{ eq "a" "b" "c" "a" }} {{ eq "a" "b" }}', "true true false"),
        ('{{ ne 1 2 }} {{ ne "a" "a" }}', "true false"),
        ("{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge 3 2 }}", "true true false true"),
        ('{{ lt "abc" "abd" }} {{ lt 1.5 2.5 }}', "true true"),
        ('{{ eq .Missing "x" }}', "false"),
        ('{{ len .L }} {{ len "héllo" }} {{ len .M }}', "3 6 1"),
        ('{{ index .L 1 }} {{ index .M "k" }} {{ index .N 1 0 }}', "b v c"),
        ('{{ index .M "absent" }}', "<no value>"),
        ('{{ slice .L 1 }} {{ slice .L 1 2 }} {{ slice "hello" 1 3 }} {{ slice .L }}', "[b c] [b] el [a b c]"),
        ("{{ len (slice .L 2) }}", "1"),
        (
            '{{ print 1 2 }}|{{ print "a" 1 "b" }}|{{ print "a" "b" }}|{{ print 1.5 true nil }}',
            "1 2|a1b|ab|1.5 true <nil>",
        ),
        ('{{ println 1 "a" }}', "1 a\n"),
        ('{{ printf "%s=%d (%v) %q" "k" 42 .L "q\\"" }}', 'k=42 ([a b c]) "q\\""'),
        (
            '{{ printf "%5.2f|%-4d|%04d|%x|%X|%t|%%|%6s|%-3s|" 3.14159 7 42 255 255 true "r" "l" }}',
            " 3.14|7   |0042|ff|FF|true|%|     r|l  |",
        ),
        ('{{ printf "%d %d" 1 }}', "1 %!d(MISSING)"),
        ('{{ printf "%d" 1 2 }}', "1%!(EXTRA int=2)"),
        ('{{ printf "%d" "x" }}', "%!d(string=x)"),
        ('{{ printf "%v %v %v" 1000000.0 0.00001 123456.0 }}', "1e+06 1e-05 123456"),
        ('{{ printf "%e %g %.3g" 1234.5678 1234.5678 1234.5678 }}', "1.234568e+03 1234.5678 1.23e+03"),
        ('{{ html "<a href=\'x\'>&\\"</a>" }}', "&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;"),
        ('{{ urlquery "a b&c=d/é" }}', "a+b%26c%3Dd%2F%C3%A9"),
        ('{{ .S | printf "%q" }}', '"x\\ny"'),
        ('{{ "x" | printf "%s-%s" "a" }}', "a-x"),
        ('{{ .L | len | printf "%03d" }}', "003"),
        ('{{ printf "%s|%T|%T" .M 1 .L }}', "map[k:v]|int|[]interface {}"),
        ("{{ (index .P 0).Name }}", "first"),
    ],
)
def test_builtin_functions(src: str, expected: str) -> None:
    data = {"L": ["a", "b", "c"], "M": {"k": "v"}, "N": [["a"], ["c"]], "S": "x\ny", "P": [{"Name": "first"}]}
    assert render(src, data) == expected


@pytest.mark.parametrize(
    ("src", "fragment"),
    [
        ('{{ eq 1 "1" }}', "incompatible types for comparison"),
        ("{{ eq 1 1.0 }}", "incompatible types for comparison"),
        ("{{ lt true false }}", "invalid type for comparison"),
        ("{{ index .L 5 }}", "index out of range: 5"),
        ("{{ slice .L 2 9 }}", "index out of range: 9"),
        ("{{ len 3 }}", "len of type int"),
        ("{{ index .M 1 }}", "value has type int; should be string"),
        ("{{ not 1 2 }}", "wrong number of args for not: want 1 got 2"),
        ("{{ ne 1 }}", "wrong number of args for ne: want 2 got 1"),
        ('{{ "a" 1 }}', "can't give argument to non-function"),
        ("{{ range .S }}{{ end }}", "range can't iterate over"),
    ],
)
def test_execution_errors(src: str, fragment: str) -> None:
    with pytest.raises(TemplateError, match=fragment):
        render(src, {"L": [1, 2], "S": "str", "M": {"k": "v"}})


def test_literals() -> None:
    assert render("{{ `raw\n\\n` }}") == "raw\n\\n"
    assert render('{{ "tab\\tnl\\n\\u00e9\\x41" }}') == "tab\tnl\né" + "A"
    assert render("{{ 'a' }} {{ 0x1F }} {{ 0o17 }} {{ 017 }} {{ 1_000 }} {{ -5 }} {{ +5 }}") == "97 31 15 15 1000 -5 5"
    assert render("{{ 1.5 }} {{ 1e3 }} {{ 3.0 }} {{ .5 }}") == "1.5 1000 3 0.5"
    assert render("{{ true }} {{ false }}") == "true false"
    assert render('{{ printf "%v" nil }}') == "<nil>"


def test_value_printing_like_go() -> None:
    data = {
        "F": 2.50,
        "Big": 1e21,
        "Small": 1e-7,
        "I": 12345678.0,
        "L": [1, "a", None],
        "B": True,
        "Nested": {"x": [1, 2]},
    }
    assert render("{{ .F }} {{ .Big }} {{ .Small }} {{ .I }}", data) == "2.5 1e+21 1e-07 1.2345678e+07"
    assert render("{{ .L }} {{ .B }} {{ .Nested }}", data) == "[1 a <nil>] true map[x:[1 2]]"


def test_json_function() -> None:
    data = {
        "D": {"b": 1, "a": [True, None, "<x>&"]},
        "O": OrderedMap([("z", 1.0), ("a", 0.5)]),
        "Floats": [3.0, 1e21, 1e-7, 1e20, -0.0, 123456789.0],
        "S": "é\u2028\x01\b",
    }
    assert render("{{ json .D }}", data) == '{"a":[true,null,"\\u003cx\\u003e\\u0026"],"b":1}'
    assert render("{{ json .O }}", data) == '{"z":1,"a":0.5}'
    assert render("{{ json .Floats }}", data) == "[3,1e+21,1e-7,100000000000000000000,-0,123456789]"
    assert render("{{ json .S }}", data) == '"é\\u2028\\u0001\\b"'
    assert render('{{ json .Missing }}|{{ json (index .D "b") }}', data) == "null|1"
    assert render("{{ json .P }}", {"P": Person("A", 1, [])}) == '{"Name":"A","Age":1,"Tags":[]}'
    assert render("{{ json .N }}", {"N": float("nan")}) == ""  # Ollama ignores the marshal error
    with pytest.raises(ValueError):
        go_json(float("inf"))


def test_current_date_functions() -> None:
    today = datetime.date.today()
    out = render('{{ currentDate }}|{{ currentDate "2006-01-02" }}|{{ yesterdayDate }}')
    first, second, third = out.split("|")
    assert first == second
    assert datetime.date.fromisoformat(first) in (today, today + datetime.timedelta(days=1))
    assert datetime.date.fromisoformat(first) - datetime.date.fromisoformat(third) == datetime.timedelta(days=1)


# ---------------------------------------------------------------- parse errors


@pytest.mark.parametrize(
    ("src", "line", "fragment"),
    [
        ("hello {{ .Prompt ", 1, "unclosed action"),
        ("a\nb\n{{ nofunc .X }}", 3, 'function "nofunc" not defined'),
        ("{{ $undefined }}", 1, 'undefined variable "$undefined"'),
        ("ok\n{{ end }}", 2, "unexpected {{end}}"),
        ("{{ else }}", 1, "unexpected {{else}}"),
        ("{{ if .X }}\nnever closed", 2, "unexpected EOF"),
        ("{{ range .X }}{{ else }}{{ else }}{{ end }}", 1, "expected end; found {{else}}"),
        ('\n\n{{ "unterminated }}', 3, "unterminated quoted string"),
        ("{{ 12abc }}", 1, "bad number syntax"),
        ("{{ 08 }}", 1, "illegal number syntax"),
        ("{{ }}", 1, "missing value for command"),
        ("{{ .X | 3 }}", 1, "non executable command in pipeline stage 2"),
        ("{{ (.X }}", 1, "unclosed left paren"),
        ("{{ .X) }}", 1, "unexpected right paren"),
        ("{{ nil }}", 1, None),  # allowed to parse; fails when executed
        ('{{ define "x" }}{{ end }}', 1, "{{define}} is not supported"),
        ('{{ template "x" }}', 1, "{{template}} is not supported"),
    ],
)
def test_parse_errors_name_the_line(src: str, line: int, fragment: str | None) -> None:
    if fragment is None:
        with pytest.raises(TemplateError, match="nil is not a command"):
            render(src)
        return
    with pytest.raises(TemplateError) as info:
        Template(src)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"line {line}: ")
    assert fragment in str(info.value)


def test_uses_and_variables() -> None:
    t = Template("{{ if .System }}{{ .System }}{{ end }}{{ range $.Messages }}{{ .Content }}{{ end }}")
    assert t.uses("Messages") and t.uses("messages") and t.uses("System") and t.uses("Content")
    assert not t.uses("Tools") and not t.uses("Suffix") and not t.uses("Response")
    assert t.variables() == ["$", "content", "messages", "system"]
    # As Ollama's Vars(): a template naming neither messages nor response gets {{ .Response }} appended.
    assert Template("{{ .Prompt }}").variables() == ["prompt", "response"]
    assert not Template("{{ .Prompt }}").uses("Response")
    assert Template("{{ with .Tools }}{{ . }}{{ end }}").uses("Tools")
    assert Template("{{ if .Think }}<think>{{ end }}{{ .Prompt }}").uses("Think")
    assert Template("{{ json (index .Xs 0) }}").uses("Xs")
    assert str(t) == t.source


# ---------------------------------------------------------------- Ollama prompt semantics


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and country, e.g. Paris, France"},
                "format": {
                    "type": "string",
                    "description": "The temperature unit to use",
                    "enum": ["celsius", "fahrenheit"],
                },
            },
            "required": ["location", "format"],
        },
    },
}
# Go's json.Marshal of Ollama's tool structs: fields in struct order, properties map sorted by key.
WEATHER_TOOL_JSON = (
    '{"type":"function","function":{"name":"get_current_weather",'
    '"description":"Get the current weather for a location",'
    '"parameters":{"type":"object","required":["location","format"],"properties":{'
    '"format":{"type":"string","description":"The temperature unit to use","enum":["celsius","fahrenheit"]},'
    '"location":{"type":"string","description":"The city and country, e.g. Paris, France"}}}}}'
)
WEATHER_CALL: dict[str, Any] = {
    "function": {"name": "get_current_weather", "arguments": {"location": "Paris", "format": "celsius"}}
}
WEATHER_ARGS_JSON = '{"format":"celsius","location":"Paris"}'

TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
    {"role": "tool", "content": '{"temperature": 22}', "tool_name": "get_current_weather"},
]


def test_tools_print_as_json() -> None:
    t = Template("{{ range .Messages }}{{ end }}{{ range .Tools }}{{ . }}|{{ .Function }}{{ end }}")
    out = render_chat_prompt(t, messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL])
    function_json = WEATHER_TOOL_JSON[len('{"type":"function","function":') : -1]
    assert out == f"{WEATHER_TOOL_JSON}|{function_json}"
    t = Template("{{ range .Messages }}{{ end }}{{ .Tools }}|{{ json .Tools }}")
    assert render_chat_prompt(t, messages=[], tools=[WEATHER_TOOL]) == f"[{WEATHER_TOOL_JSON}]|[{WEATHER_TOOL_JSON}]"
    assert render_chat_prompt(t, messages=[]) == "null|null"


def test_tool_fields_are_reachable() -> None:
    src = (
        "{{ range .Messages }}{{ end }}{{ range .Tools }}{{ .Type }} {{ .Function.Name }}: "
        "{{ .Function.Description }} req={{ .Function.Parameters.Required }} "
        "{{ range $name, $p := .Function.Parameters.Properties }}{{ $name }}:{{ $p.Type }}"
        "({{ $p.Description }}){{ with $p.Enum }}{{ . }}{{ end }} {{ toTypeScriptType $p }};{{ end }}{{ end }}"
    )
    out = render_chat_prompt(Template(src), messages=[], tools=[WEATHER_TOOL])
    assert out == (
        "function get_current_weather: Get the current weather for a location req=[location format] "
        "format:string(The temperature unit to use)[celsius fahrenheit] string;"
        "location:string(The city and country, e.g. Paris, France) string;"
    )


def test_tool_call_fields_and_argument_order() -> None:
    src = (
        "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Index }}:{{ .Function.Name }}"
        "{{ .Function.Arguments }}{{ json .Function.Arguments }}"
        "{{ range $k, $v := .Function.Arguments }} {{ $k }}={{ $v }}{{ end }}{{ end }}"
        "{{ if .ToolName }}[{{ .ToolName }}:{{ .ToolCallID }}]{{ end }}{{ end }}"
    )
    call = {"function": {"index": 1, "name": "f", "arguments": {"zeta": "z", "alpha": 12345678, "mid": [1, 2]}}}
    msgs: list[dict[str, Any]] = [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "ok", "tool_name": "f", "tool_call_id": "call_1"},
    ]
    # Ollama's templates see the arguments as a Go map decoded from JSON: keys sorted, numbers float64.
    sorted_json = '{"alpha":12345678,"mid":[1,2],"zeta":"z"}'
    assert render_chat_prompt(Template(src), messages=msgs) == (
        f"1:f{sorted_json}{sorted_json} alpha=1.2345678e+07 mid=[1 2] zeta=z[f:call_1]"
    )
    kept_json = '{"zeta":"z","alpha":12345678,"mid":[1,2]}'
    assert render_chat_prompt(Template(src), messages=msgs, preserve_key_order=True) == (
        f"1:f{kept_json}{kept_json} zeta=z alpha=1.2345678e+07 mid=[1 2][f:call_1]"
    )


def test_tool_call_arguments_as_json_string_and_missing() -> None:
    src = (
        "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Arguments }}/{{ json .Function.Arguments }};"
        "{{ end }}{{ end }}"
    )
    msgs: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "a", "arguments": '{"b": 2, "a": 1}'}}, {"function": {"name": "b"}}],
        }
    ]
    assert render_chat_prompt(Template(src), messages=msgs) == '{"a":1,"b":2}/{"a":1,"b":2};{}/null;'


def test_messages_print_as_go_structs() -> None:
    t = Template("{{ range .Messages }}{{ . }};{{ range .ToolCalls }}{{ . }}{{ end }}{{ end }}")
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
    ]
    assert render_chat_prompt(t, messages=msgs) == (
        '{user hi  [] []  };{assistant   [] [{ {0 f {"a":1}}}]  };{ {0 f {"a":1}}}'
    )


def test_message_fields_and_collation() -> None:
    src = (
        "System={{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }}"
        "{{ with .Thinking }}(thought {{ . }}){{ end }}{{ if .Images }}[{{ len .Images }} img]{{ end }};{{ end }}"
    )
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "A"},
        {"role": "system", "content": "B"},
        {"role": "user", "content": "hi", "images": ["aGk="]},
        {"role": "USER", "content": "there"},
        {"role": "assistant", "content": "yo", "thinking": "hmm"},
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
    ]
    assert render_chat_prompt(Template(src), messages=msgs) == (
        "System=A\n\nB|system:A\n\nB;user:hi\n\nthere[1 img];assistant:yo(thought hmm);tool:1;tool:2;"
    )


def test_system_argument_is_folded_in_unless_a_system_message_leads() -> None:
    t = Template("{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}")
    user = [{"role": "user", "content": "q"}]
    assert render_chat_prompt(t, messages=user, system="S") == "system=S;user=q;"
    assert (
        render_chat_prompt(t, messages=[{"role": "system", "content": "own"}, *user], system="S")
        == "system=own;user=q;"
    )
    assert render_chat_prompt(t, messages=[], prompt="just a prompt") == "user=just a prompt;"


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        (None, "false||false"),
        (True, "true|medium|true"),
        (False, "false||true"),
        ("high", "true|high|true"),
    ],
)
def test_think_values(think: bool | str | None, expected: str) -> None:
    t = Template("{{ range .Messages }}{{ end }}{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}")
    assert render_chat_prompt(t, messages=[{"role": "user", "content": "x"}], think=think) == expected


def test_fill_in_middle() -> None:
    t = fixture("qwen2.5-coder.gotmpl")
    out = render_chat_prompt(t, messages=[], prompt="def add(a, b):\n", suffix="\n    return c\n")
    assert out == "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c\n<|fim_middle|>"
    # An empty suffix is ordinary generation through the chat branch.
    out = render_chat_prompt(t, messages=[{"role": "user", "content": "hi"}], prompt="hi", suffix="")
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    codellama = Template("<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>")
    assert render_chat_prompt(codellama, messages=[], prompt="a", suffix="b") == "<PRE> a <SUF>b <MID>"


def test_legacy_template_renders_each_turn_and_stops_at_the_final_response() -> None:
    t = fixture("chatml-legacy.gotmpl")
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant!"},
        {"role": "user", "content": "Hello friend!"},
        {"role": "assistant", "content": "Hello human!"},
        {"role": "user", "content": "What is your name?"},
    ]
    assert render_chat_prompt(t, messages=msgs) == (
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n"
        "<|im_start|>user\nHello friend!<|im_end|>\n"
        "<|im_start|>assistant\nHello human!<|im_end|>\n"
        "<|im_start|>user\nWhat is your name?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_legacy_template_continues_a_trailing_assistant_message() -> None:
    t = Template("[INST] {{ .Prompt }}[/INST] {{ .Response }}")
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "Hello friend!"},
        {"role": "assistant", "content": "Hello human!"},
        {"role": "user", "content": "What is your name?"},
        {"role": "assistant", "content": "My name is Ollama and I"},
    ]
    assert render_chat_prompt(t, messages=msgs) == (
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"
    )


MISTRAL_HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Hello friend!"},
    {"role": "assistant", "content": "Hello human!"},
    {"role": "user", "content": "What is your name?"},
]


@pytest.mark.parametrize(
    "src",
    [
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ",
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
        (
            '[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n{{- if eq .Role "user" }}'
            '{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}\n{{- end }}'
        ),
    ],
)
@pytest.mark.parametrize(
    ("system", "expected"),
    [
        (None, "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "),
        (
            "You are a helpful assistant!",
            "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] ",
        ),
    ],
)
def test_legacy_and_messages_templates_agree(src: str, system: str | None, expected: str) -> None:
    # The three spellings Ollama's own tests use for one Mistral prompt all render the same text.
    assert render_chat_prompt(Template(src), messages=MISTRAL_HISTORY, system=system) == expected


def test_legacy_template_without_response_gets_one_appended() -> None:
    # Mistral v0.1's library template: Ollama appends {{ .Response }} to it.
    t = fixture("mistral-v0.1.gotmpl")
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "A"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "C"},
    ]
    assert render_chat_prompt(t, messages=msgs) == "[INST]  A [/INST]\nB[INST]  C [/INST]\n"
    assert render_chat_prompt(t, messages=[{"role": "user", "content": "Q"}], system="S") == "[INST] S Q [/INST]\n"
    # Plain execute() keeps Go semantics: no appended node, missing keys print <no value>.
    assert t.execute({"System": "S", "Prompt": "Q"}) == "[INST] S Q [/INST]\n"


# ---------------------------------------------------------------- real library templates


def test_chatml_library_template() -> None:
    t = fixture("ollama-chatml.gotmpl")
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    assert render_chat_prompt(t, messages=msgs) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama3_instruct_library_template() -> None:
    t = fixture("ollama-llama3-instruct.gotmpl")
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert render_chat_prompt(t, messages=msgs, system="Be terse.") == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


LLAMA31_SYSTEM_WITH_TOOLS = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "You are a helpful assistant.\n\n"
    "Cutting Knowledge Date: December 2023\n\n"
    "When you receive a tool call response, use the output to format an answer to the orginal user question.\n\n"
    "You are a helpful assistant with tool calling capabilities.<|eot_id|>"
)


def test_llama31_tools_are_offered_in_the_last_user_turn() -> None:
    t = fixture("llama3.1.gotmpl")
    out = render_chat_prompt(t, messages=TOOL_CONVERSATION[:2], tools=[WEATHER_TOOL])
    assert out == (
        LLAMA31_SYSTEM_WITH_TOOLS + "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its proper arguments "
        "that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. '
        "Do not use variables.\n\n" + WEATHER_TOOL_JSON + "\n\n"
        "Question: What is the weather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama31_tool_call_and_result() -> None:
    t = fixture("llama3.1.gotmpl")
    out = render_chat_prompt(t, messages=TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    assert out == (
        LLAMA31_SYSTEM_WITH_TOOLS
        + "<|start_header_id|>user<|end_header_id|>\n\nWhat is the weather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_current_weather", "parameters": ' + WEATHER_ARGS_JSON + "}<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n"
        '{"temperature": 22}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama31_plain_multi_turn() -> None:
    t = fixture("llama3.1.gotmpl")
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    assert render_chat_prompt(t, messages=msgs) == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


QWEN_TOOLS_SYSTEM = (
    "<|im_start|>system\nYou are a helpful assistant.\n\n"
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": ' + WEATHER_TOOL_JSON[len('{"type":"function","function":') : -1] + "}\n"
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)


@pytest.mark.parametrize("name", ["qwen2.5.gotmpl", "qwen2.5-coder.gotmpl"])
def test_qwen25_tool_call_and_result(name: str) -> None:
    out = render_chat_prompt(fixture(name), messages=TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    assert out == (
        QWEN_TOOLS_SYSTEM + "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_current_weather", "arguments": ' + WEATHER_ARGS_JSON + "}\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n"
        '{"temperature": 22}\n'
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen25_multi_turn_and_assistant_prefill() -> None:
    t = fixture("qwen2.5.gotmpl")
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Count to 3"},
        {"role": "assistant", "content": "1, 2"},
    ]
    # No system and no tools: no system turn. A trailing assistant turn is left open.
    assert render_chat_prompt(t, messages=msgs) == (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nCount to 3<|im_end|>\n"
        "<|im_start|>assistant\n1, 2"
    )


def test_qwen25_parallel_tool_calls() -> None:
    t = fixture("qwen2.5.gotmpl")
    call2 = {"function": {"name": "get_current_weather", "arguments": {"location": "Rome", "format": "celsius"}}}
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL, call2]},
    ]
    assert render_chat_prompt(t, messages=msgs) == (
        "<|im_start|>user\nParis and Rome?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_current_weather", "arguments": {"format":"celsius","location":"Paris"}}\n'
        '{"name": "get_current_weather", "arguments": {"format":"celsius","location":"Rome"}}\n'
        "</tool_call>"
    )


def test_mistral_v03_tools_system_and_results() -> None:
    t = fixture("mistral-v0.3.gotmpl")
    msgs = [
        *TOOL_CONVERSATION,
        {"role": "assistant", "content": "It is 22°C in Paris."},
        {"role": "user", "content": "And in London?"},
    ]
    # Mistral v3 layout: [AVAILABLE_TOOLS] and the system prompt go with the last user turn.
    assert render_chat_prompt(t, messages=msgs, tools=[WEATHER_TOOL]) == (
        "[INST] What is the weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": ' + WEATHER_ARGS_JSON + "}]</s>"
        '[TOOL_RESULTS] {"content": {"temperature": 22}} [/TOOL_RESULTS]'
        "It is 22°C in Paris.</s>"
        "[AVAILABLE_TOOLS] [" + WEATHER_TOOL_JSON + "][/AVAILABLE_TOOLS]"
        "[INST] You are a helpful assistant.\n\nAnd in London?[/INST]"
    )


def test_mistral_v03_single_turn_and_legacy_generate() -> None:
    t = fixture("mistral-v0.3.gotmpl")
    assert render_chat_prompt(t, messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL]) == (
        "[AVAILABLE_TOOLS] [" + WEATHER_TOOL_JSON + "][/AVAILABLE_TOOLS][INST] Hi[/INST]"
    )
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert render_chat_prompt(t, messages=msgs) == "[INST] Hi[/INST]Hello</s>[INST] Bye[/INST]"


def test_mistral_instruct_library_template() -> None:
    t = fixture("ollama-mistral-instruct.gotmpl")
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert render_chat_prompt(t, messages=msgs) == "[INST] Be kind.\n\nHi[/INST] Hello</s>[INST] Bye[/INST]"


def test_templates_are_reusable_and_thread_free() -> None:
    t = fixture("qwen2.5.gotmpl")
    first = render_chat_prompt(t, messages=[{"role": "user", "content": "a"}])
    render_chat_prompt(t, messages=TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    assert render_chat_prompt(t, messages=[{"role": "user", "content": "a"}]) == first
    source = (TEMPLATES / "qwen2.5.gotmpl").read_text(encoding="utf-8")
    assert render_chat_prompt(source, messages=[{"role": "user", "content": "a"}]) == first
