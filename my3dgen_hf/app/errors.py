"""Errors the app shows to the user as a readable message (never a stack trace)."""

from __future__ import annotations


class AppError(Exception):
    """A problem the user can fix; its message is shown as is."""


def user_message(exc: BaseException) -> str:
    """A one-paragraph message for any exception: our own messages as they are, others with their type."""
    if isinstance(exc, AppError):
        return str(exc)
    text = str(exc).strip() or exc.__class__.__name__
    # Library errors that already carry an actionable message (AdapterError, FileNotFoundError, ValueError, ...).
    first = text.splitlines()[0] if "\n" in text else text
    if len(first) > 600:
        first = first[:600] + " ..."
    name = exc.__class__.__name__
    if name in ("AdapterError", "ValueError", "FileNotFoundError", "PermissionError"):
        return first
    return f"{name}: {first}"
