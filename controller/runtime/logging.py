"""Structured logging for the operator (structlog over the standard library's logging).

Guarantees:
- `configure_logging("json")` writes one JSON object per line (timestamp, level, logger, event, fields): what a
  cluster's log pipeline wants. `"console"` writes aligned, coloured key=value lines for a person at a terminal.
  `"auto"` picks console when stderr is a terminal, JSON otherwise.
- Standard-library loggers (urllib3, kubernetes) go through the same renderer at the same level.
- Calling it again reconfigures (tests and the CLI may both call it).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

FORMATS = ("auto", "json", "console")
LEVELS = ("debug", "info", "warning", "error")


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}")
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    numeric = getattr(logging, level.upper(), None)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # The HTTP pool's own chatter is noise at info level.
    logging.getLogger("urllib3").setLevel(max(numeric, logging.WARNING))
