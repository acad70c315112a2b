"""Log lines with a fixed vocabulary: a static message, then dotted `key=value` fields."""

from __future__ import annotations

import logging
import sys

_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class FieldFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{key}={value}" for key, value in vars(record).items()
                  if key not in _STANDARD_ATTRIBUTES and "." in key]
        if fields:
            head, _, tail = line.partition("\n")
            line = f"{head} {' '.join(fields)}" + (f"\n{tail}" if tail else "")
        return line


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("crpe")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
