"""docs/protocol.md against the code: every client message type, event, error code and
danmu / barge-in setting the code has is documented, and no other. Entries marked † are
version-1 contract not in this agent yet; once the code has one, the mark must go."""

from __future__ import annotations

import ast
import pathlib
import re
import typing

from agent import protocol

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "protocol.md").read_text()
PENDING = "†"


def section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end != -1 else None]


def first_column(text: str) -> dict[str, bool]:
    """Names in the first column of a section's table rows: {name: marked pending}."""
    names: dict[str, bool] = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        for name, mark in re.findall(r"`([a-z_]+)`\s*(†?)", cell):
            names[name] = bool(mark)
    return names


def split(documented: dict[str, bool]) -> tuple[set[str], set[str]]:
    return {n for n, p in documented.items() if not p}, {n for n, p in documented.items() if p}


def code_command_types() -> set[str]:
    union = typing.get_args(typing.get_args(protocol.Command)[0])
    return {model.model_fields["type"].default for model in union}


def code_event_types() -> set[str]:
    """Every event the agent emits: the literal first argument of each `event(...)` call."""
    found = set()
    for path in (ROOT / "agent").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "event" and node.args:
                arg = node.args[0]
                assert isinstance(arg, ast.Constant), f"{path}:{node.lineno}: an event type must be a literal"
                found.add(arg.value)
    return found


def test_client_messages_match_the_code():
    live, pending = split(first_column(section("Client → agent")))
    assert live == code_command_types()
    assert not pending & code_command_types(), "implemented now: remove the † from docs/protocol.md"


def test_events_match_the_code():
    live, pending = split(first_column(section("Agent → client")))
    assert live == code_event_types()
    assert not pending & code_event_types(), "implemented now: remove the † from docs/protocol.md"


def test_error_codes_match_the_code():
    text = section("Agent → client")
    listed = re.search(r"Error codes:(.*?)\.\s", text, re.S).group(1)
    assert set(re.findall(r"`([a-z_]+)`", listed)) == {c.value for c in protocol.ErrorCode}
    http = section("HTTP (control plane)")
    mapped = set(re.findall(r"`([a-z_]+)`", http.split("Protocol errors map to statuses:")[1].split("|")[0]))
    assert mapped <= {c.value for c in protocol.ErrorCode}


def test_danmu_and_barge_in_settings_match_the_code():
    for title, model in (("Danmu (live-chat) rules", protocol.DanmuRules), ("Barge-in (the agent listens)",
                                                                             protocol.BargeIn)):
        live, pending = split(first_column(section(title)))
        assert live == set(model.model_fields), title
        assert not pending & set(model.model_fields), f"{title}: implemented now, remove the †"


def test_the_readme_links_the_shipped_protocol_not_the_team_contract():
    readme = (ROOT / "README.md").read_text()
    assert "docs/protocol.md" in readme and "../shared" not in readme
    assert "RFC 9725" not in readme.replace("WHIP,\n  RFC 9725", "").replace("WHIP, RFC 9725", "")
