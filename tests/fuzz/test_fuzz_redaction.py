"""Redaction under hostile URLs: a key that would authenticate never survives mask_url.

"Would authenticate": the query parameter's name decodes (as mitmproxy's and Python's query parsers
decode it, percent-escapes and all) to `key`, the name Gemini reads; or the name is `key` in another
case, or it follows a `;`, which servers that split on `;` read as a parameter too. Whatever
client_key reads from the query, mask_url must hide, in clear or percent-encoded.
"""

from __future__ import annotations

from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st
from mitmproxy.http import Headers
from mitmproxy.test import tutils

from llm_proxy.redact import client_key, mask_url

from .strategies import SECRET, key_param, random_path_bytes

_OTHER_PARAM = st.sampled_from(["alt=sse", "x=1", "a=%ZZ", "=", "key", "beta", "k=v=w", "keys=1", "monkey=2",
                                "%", "%6", "key%3D1"])
_SEPARATOR = st.sampled_from(["&", "&&", ";", "&;"])


@st.composite
def url_with_key(draw: st.DrawFn) -> str:
    params = draw(st.lists(_OTHER_PARAM, max_size=3))
    params.insert(draw(st.integers(0, len(params))), draw(key_param()))
    query = params[0]
    for param in params[1:]:
        query += draw(_SEPARATOR) + param
    prefix = draw(st.sampled_from(["/v1beta/models/gemini-2.5-flash:generateContent",
                                   "https://generativelanguage.googleapis.com/v1beta/models/x:streamGenerateContent",
                                   "/", ""]))
    return f"{prefix}?{query}" + draw(st.sampled_from(["", "#frag", "#key=x"]))


def _shows_secret(text: str) -> bool:
    return any(SECRET.lower() in view.lower() for view in (text, unquote(text), unquote(unquote(text))))


@given(url_with_key())
def test_mask_url_hides_every_key_that_would_authenticate(url: str) -> None:
    masked = mask_url(url)
    assert not _shows_secret(masked), masked


@given(url_with_key())
def test_what_client_key_reads_from_the_query_mask_url_hides(url: str) -> None:
    path = url[url.index("/", 8):] if url.startswith("https://") else (url if url.startswith("/") else "/" + url)
    request = tutils.treq(path=path.encode(), headers=Headers([(b"host", b"x")]))
    found = client_key(request)
    if found:
        masked = mask_url(request.path)
        assert found not in masked and found not in unquote(masked), masked


@given(st.one_of(st.text(max_size=80), random_path_bytes.map(lambda b: b.decode("utf-8", "surrogateescape"))))
def test_mask_url_never_raises_and_keeps_urls_without_a_key(url: str) -> None:
    masked = mask_url(url)
    assert isinstance(masked, str)
    if "key" not in unquote(url).lower():
        assert masked == url
