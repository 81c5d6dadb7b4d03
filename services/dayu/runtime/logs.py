"""Structured logs: one JSON object per line on stderr (or readable lines with format=console),
each carrying the component and node that wrote it."""

from __future__ import annotations

import logging
import sys

import structlog

from dayu.runtime.config import LogSettings


def configure_logging(settings: LogSettings, **context: str) -> None:
    """Sets up structlog and routes the standard library's logging (grpc, asyncio) through it."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )

    def add_context(_logger: object, _method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        for key, value in context.items():
            event.setdefault(key, value)
        return event

    shared: list[structlog.types.Processor] = [
        add_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]
