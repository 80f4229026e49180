"""Query parameters of the usage and requests APIs (and `llm-proxy report`'s flags).

Every bad value is refused with a BadParameter that names the parameter, so a
400 tells the caller exactly what to fix; unknown parameter names are refused
too (a misspelled filter must not silently widen a report).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

GROUP_FIELDS = ("key", "model", "response_model", "provider", "api", "status", "day", "hour")
DEFAULT_SINCE = "30d"
MAX_LIMIT = 500
_RELATIVE = re.compile(r"^(\d{1,6})([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class BadParameter(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def parse_time(name: str, text: str, now: datetime) -> datetime:
    """ISO 8601 (UTC when it has no offset; a bare date is its midnight) or `90m`, `24h`, `7d` ago."""
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        moment = datetime.fromisoformat(text) if len(text) > 10 else datetime.combine(
            date.fromisoformat(text), datetime.min.time())
    except ValueError:
        raise BadParameter(name, f"{text!r} is not an ISO 8601 time (2026-11-01T12:00:00Z) "
                                 "or a relative one (90m, 24h, 7d)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Filters:
    key: str | None = None
    model: str | None = None
    provider: str | None = None
    status: int | None = None


@dataclass(frozen=True, slots=True)
class UsageQuery:
    since: datetime
    until: datetime
    group_by: tuple[str, ...] = ()
    filters: Filters = Filters()


@dataclass(frozen=True, slots=True)
class RequestsQuery:
    limit: int = 50
    before: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    filters: Filters = Filters()


def _one(params: Mapping[str, str | list[str]], name: str) -> str | None:
    value = params.get(name)
    if isinstance(value, list):
        if len(value) > 1:
            raise BadParameter(name, "give it once")
        value = value[0] if value else None
    return value


def _check_names(params: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    for name in params:
        if name not in allowed:
            raise BadParameter(name, f"unknown parameter; use {', '.join(allowed)}")


def parse_group_by(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    fields = tuple(f.strip() for f in text.split(","))
    for field in fields:
        if field not in GROUP_FIELDS:
            raise BadParameter("group_by", f"{field!r} is not one of {', '.join(GROUP_FIELDS)}")
    if len(set(fields)) != len(fields):
        raise BadParameter("group_by", "a field is listed twice")
    return fields


def _window(params: Mapping[str, str | list[str]], now: datetime, default_since: str | None
            ) -> tuple[datetime | None, datetime | None]:
    since_text, until_text = _one(params, "since"), _one(params, "until")
    since_text = since_text or default_since
    since = parse_time("since", since_text, now) if since_text else None
    until = parse_time("until", until_text, now) if until_text else None
    if since is not None and until is not None and since >= until:
        raise BadParameter("since", "must be before until")
    return since, until


def _filters(params: Mapping[str, str | list[str]], *, status: bool = False) -> Filters:
    values = {name: _one(params, name) or None for name in ("key", "model", "provider")}
    code = None
    if status and (text := _one(params, "status")):
        if not text.isdigit() or not 100 <= int(text) <= 599:
            raise BadParameter("status", f"{text!r} is not an HTTP status code")
        code = int(text)
    return Filters(status=code, **values)


def usage_query(params: Mapping[str, str | list[str]], now: datetime) -> UsageQuery:
    _check_names(params, ("since", "until", "group_by", "key", "model", "provider"))
    since, until = _window(params, now, DEFAULT_SINCE)
    assert since is not None
    return UsageQuery(since, until or now, parse_group_by(_one(params, "group_by")), _filters(params))


def requests_query(params: Mapping[str, str | list[str]], now: datetime) -> RequestsQuery:
    _check_names(params, ("limit", "before", "key", "model", "provider", "status", "since", "until"))
    limit_text, before_text = _one(params, "limit"), _one(params, "before")
    limit = 50
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise BadParameter("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    before = None
    if before_text:
        if not before_text.isdigit():
            raise BadParameter("before", "must be a row id (the next_before of the previous page)")
        before = int(before_text)
    since, until = _window(params, now, None)
    return RequestsQuery(limit, before, since, until, _filters(params, status=True))
