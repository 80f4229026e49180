"""Shared test configuration: the hypothesis budgets of the fuzz layer (tests/fuzz).

"ci" (the default) keeps tests/fuzz under about 90 s on a loaded 2-core machine
and is part of every normal test run. "long" is for a deliberate hunt:

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -p no:xdist tests/fuzz

Choices, and why:
- derandomize=False: every run draws new inputs, so the suite keeps exploring
  instead of replaying the same few hundred cases forever. A failure prints
  its minimal example and a `@reproduce_failure` blob (print_blob), so it can
  be replayed exactly even without a database.
- database=None in "ci": no example database is written into the checkout,
  so runs are not stateful across clones or CI jobs and nothing untracked
  appears. "long" keeps hypothesis's local database (.hypothesis/), so a
  failure found in a long hunt is replayed first on the next run.
- deadline=None: on a shared machine one slow example is load, not a bug;
  the budget is bounded by max_examples instead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

settings.register_profile("ci", max_examples=60, database=None, **_COMMON)
settings.register_profile("long", max_examples=50_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
