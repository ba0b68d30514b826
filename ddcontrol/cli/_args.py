"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import json


def json_object(text: str, flag: str, command: str) -> dict:
    """Parse a ``--flag '{...}'`` value; exit with a clear message unless it is a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"ddcontrol {command}: {flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SystemExit(f"ddcontrol {command}: {flag} must be a JSON object")
    return value
