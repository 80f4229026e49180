"""The [models] section of providers.toml: aliases, routes and fallback chains by model.

    [models.fast]                          # a name clients send (or a glob: "gpt-4o*")
    target = "groq:llama-3.3-70b-versatile" # provider, or provider:model (an alias)
    fallbacks = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]
    retries = 1                            # retries per target before moving down the chain

Exact names win over globs; among globs the longest pattern wins.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .memo import Memo

_FIELDS = {"target", "fallbacks", "retries"}
MAX_RETRIES = 10


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str | None = None  # None: the model the client asked for

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}" if self.model else self.provider


@dataclass(frozen=True, slots=True)
class ModelRoute:
    pattern: str
    target: Target | None = None
    fallbacks: tuple[Target, ...] = ()
    retries: int | None = None


class ModelRoutes:
    def __init__(self, routes: Mapping[str, ModelRoute]) -> None:
        self._exact = {p: r for p, r in routes.items() if not _is_glob(p)}
        self._globs = sorted(((p, r) for p, r in routes.items() if _is_glob(p)), key=lambda i: -len(i[0]))
        self._glob_match: Memo[str, ModelRoute | None] = Memo(self._first_glob)

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs)

    def find(self, model: str | None) -> ModelRoute | None:
        if not model:
            return None
        route = self._exact.get(model)
        if route is not None or not self._globs:
            return route
        return self._glob_match(model)

    def _first_glob(self, model: str) -> ModelRoute | None:
        return next((r for pattern, r in self._globs if fnmatch.fnmatchcase(model, pattern)), None)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def parse_target(text: object, where: str, providers: Mapping[str, Any]) -> Target:
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}: a target is \"provider\" or \"provider:model\"")
    provider, _, model = text.partition(":")  # model names may hold ':' themselves (llama3.1:8b)
    if provider not in providers:
        raise ConfigError(f"{where}: unknown provider {provider!r} in {text!r}; known: {sorted(providers)}")
    return Target(provider, model or None)


def parse_models(tables: object, providers: Mapping[str, Any]) -> ModelRoutes:
    if not isinstance(tables, dict):
        raise ConfigError("[models] must hold [models.NAME] tables")
    routes = {}
    for pattern, table in tables.items():
        where = f"[models.\"{pattern}\"]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(table) - _FIELDS
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
        target = parse_target(table["target"], f"{where}.target", providers) if "target" in table else None
        fallbacks = table.get("fallbacks", [])
        if not isinstance(fallbacks, list):
            raise ConfigError(f"{where}.fallbacks must be a list of \"provider:model\" targets")
        retries = table.get("retries")
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)
                                    or not 0 <= retries <= MAX_RETRIES):
            raise ConfigError(f"{where}.retries must be a whole number from 0 to {MAX_RETRIES}")
        routes[pattern] = ModelRoute(
            pattern, target, tuple(parse_target(f, f"{where}.fallbacks", providers) for f in fallbacks), retries
        )
    return ModelRoutes(routes)
