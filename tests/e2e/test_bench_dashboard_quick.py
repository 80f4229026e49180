"""bench.dashboard in small: a real mitmdump with the addon on a pre-filled table, the load with and
without a dashboard poller, every dashboard answer a 200, and nothing left behind.

The ratio itself needs a quiet machine and the full sizes (`python -m bench.dashboard`); here the
benchmark's own machinery runs end to end on tiny ones.
"""

from __future__ import annotations

import re

import psycopg

from bench.dashboard import (
    CONDITIONS,
    DashboardBench,
    parse_args,
    refresh_requests,
    report,
)
from bench.services import REPO

TINY = ["--history-rows", "2000", "--rounds", "1", "--duration", "2", "--warmup", "0.5"]


def test_quick_run_measures_both_conditions_and_every_refresh_answers_200():
    args = parse_args(TINY)
    bench = DashboardBench(args, "python -m bench.dashboard " + " ".join(TINY))
    try:
        results = bench.run()
    finally:
        bench.cleanup()

    assert results["history"]["rows"] == 2000 and results["history"]["rollup_rows"] > 0
    for condition in CONDITIONS:
        measured = results["conditions"][condition]
        assert len(measured["rps_rounds"]) == 1 and measured["rps_median"] > 0
        assert measured["requests"] > 0 and measured["errors"] == 0
        assert measured["cpu_ms_per_request"]["proxy"] > 0
    assert results["ratio"] == (results["conditions"]["dashboard"]["rps_median"]
                                / results["conditions"]["plain"]["rps_median"])
    assert results["ratio_by_round"] == [results["ratio"]]
    # the live calls reached the table beside the history
    assert results["rows_after"] >= 2000 + sum(c["requests"] for c in results["conditions"].values())

    dashboard = results["dashboard"]
    assert dashboard["refreshes"] >= 2 and dashboard["non_200"] == 0
    parallel, last = refresh_requests("30d")
    assert list(dashboard["requests"]) == [name for name, _ in [*parallel, last]]
    for name, answers in dashboard["requests"].items():
        assert answers["statuses"] == {"200": dashboard["refreshes"]}, name
        assert answers["n"] == dashboard["refreshes"] and answers["p50"] > 0
    assert "| median |" in report(results)

    # nothing left: no process of ours, no table, rollup or trigger function
    assert bench.children == [] and bench.services == []
    with psycopg.connect(args.pg) as conn:
        left = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE %s UNION ALL "
                            "SELECT proname FROM pg_proc WHERE proname LIKE %s",
                            (bench.table + "%", bench.table + "%")).fetchall()
    assert left == []
    assert not bench.tmp.exists()


def test_poller_asks_what_the_page_asks_on_one_refresh():
    """The poller's requests follow app.js's load(): if the page's refresh changes, this fails."""
    script = (REPO / "llm_proxy/control/static/app.js").read_text()
    load = script[script.index("async function load()"):script.index("function refresh()")]
    page_group_bys = re.findall(r'api\("/usage" \+ query\(\{ \.\.\.params, group_by: ("?\w+"?) \}\)\)', load)
    assert page_group_bys == ["unit", '"key"', '"model"', '"provider"']
    assert 'api("/requests" + query(requestParams()))' in load and "refreshKeys()" in load
    assert "limit: 50," in script

    parallel, last = refresh_requests("7d")
    assert [path for _, path in parallel] == [
        "/_llm/api/usage?since=7d&group_by=day", "/_llm/api/usage?since=7d&group_by=key",
        "/_llm/api/usage?since=7d&group_by=model", "/_llm/api/usage?since=7d&group_by=provider",
        "/_llm/api/requests?since=7d&limit=50"]
    assert last == ("keys", "/_llm/api/keys")
    assert refresh_requests("24h")[0][0][1] == "/_llm/api/usage?since=24h&group_by=hour"
    assert refresh_requests("30d", "hour")[0][0][1] == "/_llm/api/usage?since=30d&group_by=hour"
