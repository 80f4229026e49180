"""providers.toml: the one place that says where each provider lives.

Loading validates everything up front so that a typo in the file stops the
proxy at start-up with a message naming the provider and the field, instead of
misrouting calls later.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError
from .hostnames import canonical_host, canonical_host_port, host_pattern
from .memo import Memo
from .models import ModelRoutes, parse_models

FORMATS = ("openai", "anthropic", "gemini", "ollama")
_FIELDS = {
    "base_url", "format", "hosts", "api_key_env", "base_url_env", "inject_stream_usage", "openai_base", "models",
    "key_header",
}
# Where a provider of each format serves the OpenAI-compatible API, unless providers.toml says.
_DEFAULT_OPENAI_BASE = {"openai": "/v1", "ollama": "/v1", "anthropic": None, "gemini": None}


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    base_url: str
    format: str
    hosts: tuple[str, ...]
    api_key_env: str | None = None
    # Add stream_options.include_usage to streamed OpenAI-format calls that lack it.
    # Off for providers that refuse the field (Mistral answers 422) and report usage anyway.
    inject_stream_usage: bool = True
    # Path of its OpenAI-compatible API ("/v1", groq "/openai/v1"); None: it has none.
    openai_base: str | None = None
    # Globs of the model names it serves, for routing calls by model (empty: not declared).
    models: tuple[str, ...] = ()
    # The header the real key goes in (keys mode), when not its format's own (Azure: "api-key").
    key_header: str | None = None
    # `hosts` as (canonical host, port or None): what regular-mode matching compares.
    host_keys: frozenset[tuple[str, int | None]] = field(init=False, repr=False, compare=False)
    # Wildcard `hosts` entries (`*.openai.azure.com`) as (matcher, port or None).
    host_patterns: tuple[tuple[re.Pattern[str], int | None], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys, patterns = set(), []
        for entry in self.hosts:
            host, port = canonical_host_port(entry)
            pattern = host_pattern(host)
            if pattern is None:
                keys.add((host, port))
            else:
                patterns.append((pattern, port))
        object.__setattr__(self, "host_keys", frozenset(keys))
        object.__setattr__(self, "host_patterns", tuple(patterns))

    def accepts(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def scheme(self) -> str:
        return urlsplit(self.base_url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def path_prefix(self) -> str:
        return urlsplit(self.base_url).path.rstrip("/")

    def serves(self, host: str, port: int) -> bool:
        """True if `host:port` is one of this provider's hosts (a bare host matches any port),
        compared as the connection reads them (hostnames.canonical_host), not by spelling."""
        canon = canonical_host(host)
        if (canon, None) in self.host_keys or (canon, port) in self.host_keys:
            return True
        return any((want is None or want == port) and pattern.fullmatch(canon)
                   for pattern, want in self.host_patterns)


def generic_provider(host: str, scheme: str, port: int) -> Provider:
    """An OpenAI-compatible provider named after an unknown reverse-mode target."""
    default_port = 443 if scheme == "https" else 80
    netloc = host if port == default_port else f"{host}:{port}"
    return Provider(host, f"{scheme}://{netloc}", "openai", (host.lower(),), openai_base="/v1")


class Providers:
    """The providers of one providers.toml, looked up by name or by host."""

    def __init__(self, providers: Iterable[Provider], routes: ModelRoutes | None = None) -> None:
        self.by_name: dict[str, Provider] = {p.name: p for p in providers}
        self.routes = routes if routes is not None else ModelRoutes({})
        # Model names repeat on every call: match the globs once per name.
        self.owner_of: Memo[str, Provider | None] = Memo(self._first_accepting)

    def _first_accepting(self, model: str) -> Provider | None:
        """The first provider whose `models` globs match."""
        return next((p for p in self.by_name.values() if p.accepts(model)), None)

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def get(self, name: str) -> Provider | None:
        return self.by_name.get(name)

    def for_host(self, host: str, port: int) -> Provider | None:
        for provider in self.by_name.values():
            if provider.serves(host, port):
                return provider
        return None


def _normalise_base_url(value: str, default: object) -> str:
    """OLLAMA_HOST and friends are often a bare "host" or "host:port": fill in from base_url."""
    if "://" in value:
        return value
    parts = urlsplit(f"http://{value}")
    base = urlsplit(default) if isinstance(default, str) else None
    if parts.port is None and base is not None and base.port is not None:
        value = f"{value}:{base.port}"
    return f"http://{value}"


def _default_hosts(base_url: str) -> tuple[str, ...]:
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    return (f"{host}:{parts.port}",) if parts.port else (host,)


def parse_provider(name: str, table: Mapping[str, object], env: Mapping[str, str]) -> Provider:
    where = f"[providers.{name}]"
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    base_url = table.get("base_url")
    override_env = table.get("base_url_env")
    if override_env is not None and not isinstance(override_env, str):
        raise ConfigError(f"{where}: base_url_env must be a string")
    if override_env and env.get(override_env):
        base_url = _normalise_base_url(env[override_env], base_url)
    if not isinstance(base_url, str) or not base_url:
        raise ConfigError(f"{where}: base_url is required, e.g. \"https://api.openai.com\"")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: base_url {base_url!r} must be http(s)://host[:port][/prefix]")
    fmt = table.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    hosts = table.get("hosts")
    if hosts is None:
        hosts_tuple = _default_hosts(base_url)
    elif isinstance(hosts, list) and hosts and all(isinstance(h, str) and h for h in hosts):
        hosts_tuple = tuple(h.lower() for h in hosts)
        for entry in hosts_tuple:
            try:
                host_pattern(canonical_host_port(entry)[0])
            except ValueError as e:
                raise ConfigError(f"{where}: hosts: {e}") from None
    else:
        raise ConfigError(f"{where}: hosts must be a non-empty list of \"host\" or \"host:port\" strings")
    key_env = table.get("api_key_env")
    if key_env is not None and (not isinstance(key_env, str) or not key_env):
        raise ConfigError(f"{where}: api_key_env must be the name of an environment variable")
    inject = table.get("inject_stream_usage", True)
    if not isinstance(inject, bool):
        raise ConfigError(f"{where}: inject_stream_usage must be true or false")
    openai_base = table.get("openai_base", _DEFAULT_OPENAI_BASE[fmt])
    if openai_base is not None and (not isinstance(openai_base, str) or not openai_base.startswith("/")):
        raise ConfigError(f"{where}: openai_base must be a path like \"/v1\"")
    models = table.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{where}: models must be a list of model names or globs")
    key_header = table.get("key_header")
    if key_header is not None and (not isinstance(key_header, str)
                                   or key_header.lower() not in ("authorization", "x-api-key", "x-goog-api-key",
                                                                 "api-key")):
        raise ConfigError(f"{where}: key_header must be one of authorization, x-api-key, x-goog-api-key, api-key")
    return Provider(
        name, base_url.rstrip("/"), fmt, hosts_tuple, key_env, inject,
        openai_base.rstrip("/") if openai_base else None, tuple(models),
        key_header.lower() if key_header else None,
    )


def load_providers(path: Path, env: Mapping[str, str] | None = None) -> Providers:
    """Read and validate a providers file; raises ConfigError with the reason."""
    env = os.environ if env is None else env
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read providers file {path}: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"providers file {path} is not valid TOML: {e}") from e
    tables = data.get("providers")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"providers file {path} has no [providers.NAME] tables")
    providers = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: providers.{name} must be a table")
        if "/" in name or name.startswith("_"):
            raise ConfigError(f"{path}: provider name {name!r} cannot contain '/' or start with '_'")
        try:
            providers.append(parse_provider(name, table, env))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    unknown = set(data) - {"providers", "models"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level table(s) {sorted(unknown)}; known: providers, models")
    known = {p.name: p for p in providers}
    try:
        routes = parse_models(data.get("models", {}), known)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return Providers(providers, routes)
