"""What the writer says about a database error: a summary safe for logs, health and dead letters.

A database's full error text can quote the row it refused (PostgreSQL's
CONTEXT: `COPY t, line 1, column request_body: "{...}"`, a DETAIL with a
key's value) and the SQL it ran. `/_llm/health` needs no key, and logs and
dead letters are read by people who must not see other clients' bodies. So
only this summary leaves the writer: the exception class, the SQLSTATE, the
first line of the message with quoted values masked (server errors) and
passwords masked (connection errors can quote the connection string).
"""

from __future__ import annotations

import re

from .dsn import mask_password

MAX_CHARS = 300
_QUOTED = re.compile(r'"[^"]*"')
_MASKED = '"..."'


def summarize(error: BaseException) -> str:
    """`Class: SQLSTATE 22P02: invalid input syntax for type json` or `Class: first line`."""
    name = type(error).__name__
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate:
        # A server error: its primary message only (no DETAIL, CONTEXT or SQL), and a quoted
        # value in it (`value "3000000000" is out of range`) could be a row's, so masked.
        diag = getattr(error, "diag", None)
        primary = getattr(diag, "message_primary", None) or _first_line(str(error))
        return _cap(f"{name}: SQLSTATE {sqlstate}: {_QUOTED.sub(_MASKED, primary)}")
    line = _first_line(str(error))
    return _cap(f"{name}: {mask_password(line)}" if line else name)


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def _cap(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 3] + "..."
