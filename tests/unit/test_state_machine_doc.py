"""The README's state diagram is the state machine: the same moves the schema allows, each
labelled with a function that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGE = re.compile(r"^\s*(\w+)\s*-->\s*(\w+)\s*:\s*(.+)$")


def diagram_edges() -> dict[tuple[str, str], list[str]]:
    """(from, to) -> labels, from the README's one mermaid stateDiagram."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```mermaid\n(stateDiagram-v2\n.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "the README holds exactly one state diagram"
    edges: dict[tuple[str, str], list[str]] = {}
    for line in blocks[0].splitlines():
        m = EDGE.match(line)
        if m and "*" not in (m.group(1) + m.group(2)):
            edges.setdefault((m.group(1), m.group(2)), []).append(m.group(3))
    return edges


def schema_edges() -> set[tuple[str, str]]:
    """The moves ``job_transition_allowed`` in schema.sql accepts."""
    schema = (ROOT / "schema.sql").read_text()
    body = re.search(r"FUNCTION job_transition_allowed\(.*?\$\$(.*?)\$\$", schema, flags=re.S)
    assert body is not None
    edges: set[tuple[str, str]] = set()
    for m in re.finditer(r"WHEN '(\w+)'\s+THEN to_state IN \(([^)]*)\)", body.group(1)):
        for to_state in re.findall(r"'(\w+)'", m.group(2)):
            edges.add((m.group(1), to_state))
    return edges


def test_the_diagram_draws_exactly_the_moves_the_schema_allows() -> None:
    """No move is missing from the picture, and none is drawn that the database refuses."""
    assert set(diagram_edges()) == schema_edges()


def test_every_function_named_on_an_arrow_exists() -> None:
    """``Name.method()`` and ``function()`` on the arrows are defined in the package."""
    source = "\n".join(p.read_text() for p in (ROOT / "orchestrator").rglob("*.py"))
    defined = set(re.findall(r"^\s*(?:async\s+)?def (\w+)\(", source, flags=re.M))
    classes = set(re.findall(r"^class (\w+)\b", source, flags=re.M))
    missing = []
    for labels in diagram_edges().values():
        for label in labels:
            for owner, name in re.findall(r"(?:(\w+)\.)?(\w+)\(\)", label):
                if name not in defined or (owner and owner not in classes | {"orch"}):
                    missing.append(f"{owner + '.' if owner else ''}{name}()")
    assert not missing, missing


def test_the_schema_parser_reads_the_whole_graph() -> None:
    """The parser above sees every state's row (so the equality test can fail)."""
    froms = {a for a, _ in schema_edges()}
    assert froms == {"pending", "running", "retrying", "unknown", "processing", "dead", "succeeded"}
