"""The audit trail's rules that need no database (gateway/audit.py)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from gateway import audit
from tests.support import ROOT


@pytest.mark.parametrize(("status", "outcome"), [
    (200, "success"), (201, "success"), (204, "success"), (304, "success"), (401, "failure"), (403, "failure"),
    (404, "not_found"), (409, "failure"), (410, "failure"), (422, "failure"), (429, "throttled"),
    (503, "error"),
])
def test_outcomes_follow_the_answers_status(status: int, outcome: str) -> None:
    assert audit.outcome_of(status) == outcome


def test_a_json_line_is_one_line_whatever_the_user_agent_holds() -> None:
    agent = audit.clean_text("evil\n{\"event\": \"forged\"}\r\x00\x1b[31m" + "é" * 500, audit.USER_AGENT_MAX_LENGTH)
    line = audit.Entry(event="log_in", outcome="failure", user_id=None, ip="::1", user_agent=agent).json_line(True)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    parsed = json.loads(line)
    assert parsed["user_agent"] == agent and len(agent) == audit.USER_AGENT_MAX_LENGTH
    assert parsed["user_id"] is None and parsed["stored"] is True


def test_no_code_updates_or_deletes_audit_rows_except_the_retention_purge() -> None:
    """Append-only in code too: the one DELETE on audit_events is purge_expired's, and nothing
    UPDATEs it (the database's triggers refuse both otherwise)."""
    writers: list[str] = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for call in ast.walk(function):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                        and call.func.id in {"update", "delete", "delete_rows"}
                        and any(isinstance(arg, ast.Name) and arg.id == "AuditEvent" for arg in call.args)):
                    writers.append(f"{Path(path).relative_to(ROOT)}:{function.name}:{call.func.id}")
        # ...nor by SQL text.
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and "audit_events" in node.value
                    and any(word in node.value.upper() for word in ("UPDATE", "DELETE", "TRUNCATE"))):
                writers.append(f"{Path(path).relative_to(ROOT)}:{node.lineno}:{node.value!r}")
    assert writers == ["gateway/audit.py:purge_expired:delete"]
