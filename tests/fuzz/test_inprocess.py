"""The real addon, in-process, under hostile calls: every invariant after every call.

Invariants (checked by InProcess.check after each case):
- the client gets the upstream's bytes unchanged (but the usage-only chunk the
  proxy removes when it injected include_usage);
- exactly one row per call in the database, once the writer has had it;
- the writer thread is alive;
- no secret (the client's key, the providers' real keys) in any column, log
  record, journal file or /_llm/health, as is or percent-decoded;
- every token count NULL or a non-negative integer; cost_usd NULL or >= 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .harness import Case, InProcess
from .strategies import answer, delivery, request_body, request_headers, request_path


_MOSTLY = st.integers(0, 4)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    path, shape = draw(request_path())
    headers = draw(request_headers(secret_header=draw(_MOSTLY) > 0))
    body = draw(request_body(shape))
    reply = draw(answer(shape))
    return Case(path=path, headers=headers, body=body, answer=reply, delivery=draw(delivery(len(reply.body))))


def _proxy(tmp_path_factory: pytest.TempPathFactory, *, keys: bool, database: str) -> Iterator[InProcess]:
    with InProcess(tmp_path_factory.mktemp(f"fuzz-{database}-{keys}"), keys=keys, database=database) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def passthrough_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    yield from _proxy(tmp_path_factory, keys=False, database="sqlite")


@pytest.fixture(scope="module")
def keys_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    yield from _proxy(tmp_path_factory, keys=True, database="sqlite")


@pytest.fixture(scope="module")
def passthrough_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    yield from _proxy(tmp_path_factory, keys=False, database="postgresql")


@pytest.fixture(scope="module")
def keys_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    yield from _proxy(tmp_path_factory, keys=True, database="postgresql")


def _run(proxy: InProcess, case: Case) -> None:
    proxy.check(case, proxy.run(case))


# PostgreSQL round trips cost more per case: a third of the profile's examples.
_FEWER = settings(max_examples=max(10, settings.default.max_examples // 3))


@given(case=cases())
def test_passthrough_call_on_sqlite_keeps_every_invariant(passthrough_sqlite: InProcess, case: Case) -> None:
    _run(passthrough_sqlite, case)


@given(case=cases())
def test_virtual_key_call_on_sqlite_keeps_every_invariant(keys_sqlite: InProcess, case: Case) -> None:
    _run(keys_sqlite, case)


@_FEWER
@given(case=cases())
def test_passthrough_call_on_postgres_keeps_every_invariant(passthrough_postgres: InProcess, case: Case) -> None:
    _run(passthrough_postgres, case)


@_FEWER
@given(case=cases())
def test_virtual_key_call_on_postgres_keeps_every_invariant(keys_postgres: InProcess, case: Case) -> None:
    _run(keys_postgres, case)
