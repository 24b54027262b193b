"""One-line error text for log lines and start-up messages.

The service's rule is a clear one-line error, never a traceback, for anything an operator can fix (an unreachable
broker, a refused token, a translator that does not load); exception texts can be long or multi-line (an HTTP
body, a chained cause). Every such message goes through `short_error`, so they all read alike and stay short.
"""
from __future__ import annotations

__all__ = ["short_error"]


def short_error(exc: BaseException) -> str:
    """`<ExceptionType>: <message>`, cut to 300 characters.

    Parameters
    ----------
    exc : BaseException
        The error to describe.
    """
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 300 else text[:300] + "..."
