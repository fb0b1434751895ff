"""Library log lines go to Python's `logging` (logger "tpcomm") instead of stderr. The library filters by its own level
first (env TPCOMM_LOG_LEVEL, default warn); tpcomm.set_log_level sets both."""

from __future__ import annotations

import logging

from . import _C

logger = logging.getLogger("tpcomm")

# tpcomm::LogLevel -> logging level
_TO_LOGGING = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


def _forward(level: int, message: str) -> None:
    logger.log(_TO_LOGGING.get(level, logging.WARNING), message)


def install() -> None:
    _C.set_log_callback(_forward)


def uninstall() -> None:
    _C.set_log_callback(None)


def set_log_level(level: int | str) -> None:
    """Level for the library and the "tpcomm" logger: a logging level (logging.INFO, "DEBUG", ...) or tpcomm's names
    ("error", "warn", "info", "debug")."""
    if isinstance(level, str):
        names = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING, "info": logging.INFO,
                 "debug": logging.DEBUG}
        if level.lower() not in names:
            from ._errors import invalid_argument

            raise invalid_argument("level", f"unknown log level '{level}' (error, warn, info, debug)")
        level = names[level.lower()]
    lib = 0 if level >= logging.ERROR else 1 if level >= logging.WARNING else 2 if level >= logging.INFO else 3
    _C.set_log_level(lib)
    logger.setLevel(level)
