"""Calls the configuration can never serve, found before anything goes upstream.

A call routed (by its model, a [models] entry or a fallback chain) only to
providers that cannot speak its API shape, or for which the proxy holds no
key, would fail on every attempt however often it is retried. That is the
client's or the operator's error, not the provider's: it is answered at once
with a 400 (or a 401 for a missing key) in the client's own error shape and a
message that says what to set, never with a 502 an SDK would retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config.providers import Provider, Providers
from .plan import Plan, missing_key_reason, serves_shape, shape_reason

MISSING_KEY = 401
WRONG_SHAPE = 400


@dataclass(frozen=True, slots=True)
class Unservable:
    status: int
    message: str
    code: str
    provider: str = ""


def target_problem(client_api: str, provider: Provider | None, name: str, primary: Provider,
                   real_keys: Mapping[str, str]) -> Unservable | None:
    """Why one planned target can never take the call, or None if it may."""
    if provider is None:
        return Unservable(WRONG_SHAPE, f"provider {name!r} is not in providers.toml", "unknown_provider", name)
    if provider.name == primary.name:
        return None  # the call goes where the client sent it, with the credentials it carries
    if not serves_shape(provider, client_api):
        return Unservable(WRONG_SHAPE, shape_reason(provider, client_api), "unsupported_api", provider.name)
    if provider.api_key_env and not real_keys.get(provider.name):
        return Unservable(MISSING_KEY, missing_key_reason(provider), "provider_key_missing", provider.name)
    return None


def unservable(plan: Plan, client_api: str, primary: Provider, providers: Providers,
               real_keys: Mapping[str, str], model: str | None) -> Unservable | None:
    """The answer for a call none of whose targets can take it; None when one can.

    The first target's problem is the one reported: it is where the call was meant to go.
    """
    first: Unservable | None = None
    for target in plan.targets:
        problem = target_problem(client_api, providers.get(target.provider), target.provider, primary, real_keys)
        if problem is None:
            return None
        first = first or problem
    assert first is not None  # a plan has at least its primary
    about = f"model {model!r}" if model else "this call"
    hint = ""
    if first.status == MISSING_KEY:
        hint = (f", or call {first.provider!r} by its own path (PROXY/{first.provider}/...) with your own key: "
                "a client's key only ever goes to the provider its call names")
    return Unservable(first.status, f"llm-proxy cannot serve {about}: {first.message}{hint}", first.code,
                      first.provider)
