"""Log lines: credentials redacted, fields carried by both formatters."""

from __future__ import annotations

import json
import logging

import pytest

from app.logs import JsonFormatter, TextFormatter, redact


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("GET /query?db=x&u=bob&p=hunter2&q=select", "hunter2"),
        ("query=p=hunter2&db=x", "hunter2"),
        ("headers={'authorization': 'Basic Ym9iOmh1bnRlcjI='}", "Ym9iOmh1bnRlcjI="),
        ("Authorization: Token abcdef123", "abcdef123"),
        ("q=CREATE USER bob WITH PASSWORD 'hunter2'", "hunter2"),
        ("q=CREATE%20USER%20bob%20WITH%20PASSWORD%20%27hunter2%27", "hunter2"),
        ("q=SET PASSWORD FOR bob = 'hunter2'", "hunter2"),
    ],
)
def test_redaction(line: str, secret: str) -> None:
    assert secret not in redact(line)


def test_json_and_text_formatters_carry_fields_and_redact() -> None:
    record = logging.LogRecord("hyperbytedb_proxy.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"path": "/query", "query": "p=hunter2", "status": 200}  # type: ignore[attr-defined]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "request" and entry["status"] == 200 and entry["level"] == "info"
    assert "hunter2" not in entry["query"]
    text = TextFormatter().format(record)
    assert "status=200" in text and "hunter2" not in text
