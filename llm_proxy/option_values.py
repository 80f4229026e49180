"""Refuse `--set` values of ours that mitmproxy cannot parse, and names we do not know.

mitmproxy defers a script's `--set name=value` until the script declares the
option, then parses it; a value that does not parse (`llm_retries=x`) raises
inside the script loader, which rolls the script back and logs nothing a user
would connect to the option: the proxy then runs with no addon at all, calls
pass unmetered. An exception raised in `load` is swallowed too. What does stop
mitmdump is an error logged during start-up, so each addon checks its own
deferred values in `load`, logs one clear error per bad value and drops it
(so the rest of the script still loads), and start-up then ends with that
message. A misspelled `llm_*` name is caught the same way once every addon
has declared its options (`running`).
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from mitmproxy import exceptions

logger = logging.getLogger(__name__)

OUR_PREFIX = "llm_"


def reject_unparsable(options: Any) -> list[str]:
    """Check the deferred `--set` values of every declared `llm_*` option; log and drop each
    one that does not parse. Every addon of ours calls it at the end of its `load`.

    Returns the messages logged (for tests). `options` is mitmproxy's OptManager.
    """
    deferred: dict[str, Any] = getattr(options, "deferred", {})
    messages = []
    for name in list(deferred):
        if not name.startswith(OUR_PREFIX) or name not in options._options:
            continue
        value = deferred[name]
        raw = getattr(value, "val", value)  # _UnconvertedStrings: the strings given on the command line
        if not isinstance(raw, list):
            continue  # already a typed value (set from Python), nothing to parse
        try:
            options._parse_setval(options._options[name], raw)
        except exceptions.OptionsError as e:
            spec = options._options[name]
            message = (f"llm-proxy: --set {name}={_shown(raw)} is not a valid {_type_name(spec.typespec)} "
                       f"({e}); fix or remove it. {name}: {spec.help}")
            logger.error(message)
            messages.append(message)
            del deferred[name]
    return messages


def reject_unknown(options: Any) -> list[str]:
    """Log an error for each `--set llm_*` name no addon declared (a typo silently ignored otherwise)."""
    deferred: dict[str, Any] = getattr(options, "deferred", {})
    known = [name for name in options._options if name.startswith(OUR_PREFIX)]
    messages = []
    for name in sorted(deferred):
        if not name.startswith(OUR_PREFIX):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; `mitmdump --options` lists them"
        message = f"llm-proxy: unknown option {name}{hint}"
        logger.error(message)
        messages.append(message)
        del deferred[name]
    return messages


def _type_name(typespec: Any) -> str:
    if typespec is bool:
        return "true/false value"
    if typespec is int:
        return "whole number"
    return getattr(typespec, "__name__", str(typespec))


def _shown(raw: list[str]) -> str:
    text = " ".join(raw)
    return text if len(text) <= 60 else text[:57] + "..."
