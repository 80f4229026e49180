"""Which provider a request is for, and where it must go.

Reverse mode: a first path segment naming a provider routes there (and is
stripped); otherwise the reverse target itself is the provider (a target not
in providers.toml is a generic OpenAI-compatible provider named after its
host). Regular mode: only hosts that belong to a provider are metered; all
other traffic is not ours. Only providers.toml entries are reachable by path,
so the proxy is never an open relay.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from . import apis
from .apis import api_for_path
from .config.memo import Memo
from .config.models import Target
from .config.providers import Provider, Providers, generic_provider
from .rescue.plan import Plan, make_plan


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    api: str
    # Full URL to send the request to, when the proxy must move it (path routing).
    upstream_url: str | None = None


# What may stay as it is in a URL; anything else (a byte that was not UTF-8, a space) is %-escaped.
_URL_SAFE = "/:?#[]@!$&'()*+,;=%~-._"


def ascii_url(url: str) -> str:
    """`url` as the ASCII a request line needs. A client's path may hold bytes that are not
    UTF-8 (mitmproxy keeps them as lone surrogates); they go upstream %-escaped, as they would
    be written in a URL anyway, instead of failing the call."""
    if url.isascii():
        return url
    return quote(url, safe=_URL_SAFE, errors="surrogateescape")


def split_query(path: str) -> tuple[str, str]:
    """`/a/b?x=1` -> (`/a/b`, `?x=1`)."""
    bare, sep, query = path.partition("?")
    return bare, sep + query


def route_request(
    providers: Providers, *, reverse: bool, scheme: str, host: str, port: int, path: str
) -> Route | None:
    """Decide provider and API for one request; None means "not an LLM call, pass it on"."""
    bare, query = split_query(path)
    if reverse:
        segment, _, rest = bare.lstrip("/").partition("/")
        named = providers.get(segment) if segment else None
        if named is not None:
            rest = "/" + rest
            return Route(named, api_for_path(rest), ascii_url(f"{named.base_url}{rest}{query}"))
        provider = providers.for_host(host, port) or generic_provider(host, scheme, port)
        return Route(provider, api_for_path(bare))
    provider = providers.for_host(host, port)
    if provider is None:
        return None
    return Route(provider, api_for_path(bare))


# Shapes whose model is in the body, so an unprefixed call can be routed by it.
MODEL_ROUTED = frozenset({
    apis.OPENAI_CHAT, apis.OPENAI_COMPLETIONS, apis.OPENAI_EMBEDDINGS, apis.OPENAI_RESPONSES,
    apis.ANTHROPIC_MESSAGES,
})


def plan_call(providers: Providers, route: Route, model: str | None, *, by_model: bool,
              default_retries: int) -> Plan | str:
    """The targets of a call (primary first, then fallbacks), or why no provider takes it.

    `by_model`: the call came to the plain path of a reverse proxy, so its model
    picks the provider: a [models] target (an entry without one keeps the
    routed provider), else the provider whose `models` globs match, else the
    reverse target, unless that one declares models and this is not among
    them (then: the reason for a 400).
    """
    primary = Target(route.provider.name)
    if route.api in apis.PASS_THROUGH:
        return make_plan(primary, None, 0)  # signed or self-addressed: only ever sent as it came
    model_route = providers.routes.find(model)
    if model_route is not None and model_route.target is not None and (
        by_model or model_route.target.provider == route.provider.name
    ):
        primary = model_route.target
    elif by_model and model and route.api in MODEL_ROUTED and model_route is None:
        owner = providers.owner_of(model)
        if owner is not None:
            primary = Target(owner.name)
        elif route.provider.models:
            return f"no route or provider accepts model {model!r}"
    return make_plan(primary, model_route, default_retries)


class Router:
    """`route_request` and `plan_call` for one providers.toml and retries setting, remembered.

    Both answers depend only on the config and on what the request names
    (host, path, model), and the same few come back on every call, so the
    request hook need not work them out again each time.
    """

    def __init__(self, providers: Providers, default_retries: int) -> None:
        self.providers = providers
        self.default_retries = default_retries
        self._routes: Memo[tuple[bool, str, str, int, str], Route | None] = Memo(self._route)
        self._plans: Memo[tuple[str, tuple[str, ...], str, str | None, bool], Plan | str] = Memo(self._plan)

    def route(self, *, reverse: bool, scheme: str, host: str, port: int, path: str) -> Route | None:
        bare, query = split_query(path)
        route = self._routes((reverse, scheme, host, port, bare))
        if query and route is not None and route.upstream_url is not None:
            return Route(route.provider, route.api, route.upstream_url + ascii_url(query))
        return route

    def plan(self, route: Route, model: str | None, *, by_model: bool) -> Plan | str:
        return self._plans((route.provider.name, route.provider.models, route.api, model, by_model), route)

    def _route(self, key: tuple[bool, str, str, int, str]) -> Route | None:
        reverse, scheme, host, port, bare = key
        return route_request(self.providers, reverse=reverse, scheme=scheme, host=host, port=port, path=bare)

    def _plan(self, key: tuple[str, tuple[str, ...], str, str | None, bool], route: Route) -> Plan | str:
        # The key holds all of `route` that plan_call reads: its provider's name and models, its API.
        _, _, _, model, by_model = key
        return plan_call(self.providers, route, model, by_model=by_model, default_retries=self.default_retries)
