"""The dashboard at /_llm/ in a real browser, against a real proxy with real rows.

One proxy in keys mode (with an admin key) serves the module; calls made with
the openai and anthropic SDKs through it produce the rows the page shows. Every
figure the page shows is checked against the JSON API (itself checked against
SQL by the control plane's own tests).

`LLM_PROXY_UPDATE_SCREENSHOT=1` makes test_screenshot write docs/dashboard.png
(the README's picture); otherwise it writes to a temporary directory.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import psycopg
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.e2e.conftest import Proxy, scenario, write_providers
from tests.fakes.upstream import FakeUpstream

from .conftest import ADMIN_KEY, Admin, create_key, start_proxy

REPO = Path(__file__).resolve().parents[2]
HOSTILE_MODEL = '<img src=x onerror="window.__xss=1">'
# The window the page opens with (its <select>'s default).
DEFAULT_WINDOW = "7d"


class Dash:
    def __init__(self, proxy: Proxy, admin: Admin, secrets_by_name: dict[str, str]) -> None:
        self.proxy = proxy
        self.admin = admin
        self.secrets = secrets_by_name

    @property
    def url(self) -> str:
        return f"{self.proxy.url}/_llm/"

    def chat(self, key_name: str, model: str = "gpt-4o-mini", **fake: object) -> None:
        client = openai.OpenAI(base_url=f"{self.proxy.url}/v1", api_key=self.secrets[key_name], max_retries=0)
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"hello from {key_name}"}],
                                       extra_headers=scenario(**fake))

    def settle(self, timeout: float = 15) -> None:
        """Until the rows of calls already answered are all stored (the count holds still for 0.6 s),
        so the page and the API are compared on the same rows."""
        deadline = time.monotonic() + timeout
        last, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 0.6:
            assert time.monotonic() < deadline, "the row count never settled"
            n = self.admin.get("/_llm/api/usage", since="1d")["totals"]["requests"]
            if n != last:
                last, still_since = n, time.monotonic()
            time.sleep(0.15)

    def wait_rows(self, count: int, timeout: float = 15) -> None:
        """Until the API counts `count` calls (the writer thread stores rows shortly after each call)."""
        deadline = time.monotonic() + timeout
        while (n := self.admin.get("/_llm/api/usage", since="1d")["totals"]["requests"]) < count:
            assert time.monotonic() < deadline, f"the API shows {n} calls, expected {count}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, pg_url: str, pg_table: str
         ) -> Iterator[Dash]:
    tmp = tmp_path_factory.mktemp("dashboard")
    keys_file = tmp / "keys.toml"
    made = {
        "alice": create_key(keys_file, "alice", "--rpm", "600", "--budget", "25", "--period", "monthly"),
        "bob": create_key(keys_file, "bob", "--tpm", "200000", "--models", "gpt-4o*", "claude-*"),
        "ci-bot": create_key(keys_file, "ci-bot", "--parallel", "4"),
    }
    proxy = start_proxy(tmp, upstream.url, pg_url, pg_table, keys_file=keys_file)
    admin = Admin(proxy)
    d = Dash(proxy, admin, made)
    d.chat("alice", input=1200, output=300)
    d.chat("alice", input=5400, output=800, cached=1024)
    d.chat("alice", model="gpt-4o", input=2200, output=650)
    d.chat("bob", input=800, output=120)
    d.chat("ci-bot", model="house-model-unpriced", input=90, output=10)
    d.chat("ci-bot", model=HOSTILE_MODEL, input=7, output=3)
    with pytest.raises(openai.InternalServerError):
        d.chat("alice", status=500)
    anthropic.Anthropic(base_url=f"{proxy.url}/anthropic", api_key=made["bob"], max_retries=0).messages.create(
        model="claude-sonnet-4-20250514", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
        extra_headers=scenario(input=3000, output=900, cached=2000))
    d.wait_rows(8)
    yield d
    admin.close()
    proxy.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (empty sessionStorage) per test; any JavaScript error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC")
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def loaded_stamp(page: Page) -> str:
    return page.evaluate("document.body.dataset.loaded || ''")


def wait_reload(page: Page, before: str, timeout: float = 15000) -> None:
    """Until the page has finished a load of its data after the one stamped `before`."""
    page.wait_for_function("(b) => (document.body.dataset.loaded || '') !== b", arg=before, timeout=timeout)


def sign_in(page: Page, dash: Dash) -> None:
    dash.settle()
    page.goto(dash.url)
    expect(page.locator("#auth-dialog")).to_be_visible()
    page.fill("#auth-key", ADMIN_KEY)
    page.click("#auth-submit")
    page.wait_for_selector("body[data-loaded]")


def format_usd(text: str) -> str:
    """The page's money format, written independently with Decimal: $1,234.57, or four
    significant digits below a dollar ($0.0003678)."""
    d = Decimal(text)
    if abs(d) >= 1:
        places = 2
    elif d == 0:
        places = 2
    else:
        places = min(max(-d.adjusted() - 1 + 4, 2), 10)
    q = d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    whole, _, frac = f"{q:,.{places}f}".partition(".")
    if abs(d) < 1:
        frac = frac.rstrip("0").ljust(2, "0")
    return f"${whole}.{frac}"


TOTAL_FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "unpriced")


def assert_totals_match(page: Page, totals: dict[str, Any]) -> None:
    cost = page.locator('#totals [data-total="cost_usd"]')
    assert cost.get_attribute("data-exact") == totals["cost_usd"]
    assert cost.text_content() == format_usd(totals["cost_usd"])
    for field in TOTAL_FIELDS:
        cell = page.locator(f'#totals [data-total="{field}"]')
        assert cell.text_content() == f"{totals[field]:,}", field


def test_asks_for_the_admin_key_once_and_shows_the_apis_totals(page: Page, dash: Dash) -> None:
    dash.settle()
    page.goto(dash.url)
    dialog = page.locator("#auth-dialog")
    expect(dialog).to_be_visible()
    page.fill("#auth-key", "not-the-admin-key")
    page.click("#auth-submit")
    expect(page.locator("#auth-message")).to_contain_text("refused")
    expect(dialog).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept

    page.fill("#auth-key", ADMIN_KEY)
    page.click("#auth-submit")
    page.wait_for_selector("body[data-loaded]")
    expect(dialog).to_be_hidden()
    totals = dash.admin.get("/_llm/api/usage", since=DEFAULT_WINDOW)["totals"]
    assert totals["requests"] >= 8 and totals["unpriced"] >= 1 and totals["errors"] >= 1
    assert_totals_match(page, totals)

    # Kept for the session: a reload does not ask again.
    page.reload()
    page.wait_for_selector("body[data-loaded]")
    expect(dialog).to_be_hidden()

    # Another window: the same figures as the API for that window.
    before = loaded_stamp(page)
    page.select_option("#window", "24h")
    wait_reload(page, before)
    assert_totals_match(page, dash.admin.get("/_llm/api/usage", since="24h")["totals"])
    expect(page.locator("#window-label")).to_have_text("(last 24 hours)")


def test_asks_again_when_the_kept_key_is_refused(page: Page, dash: Dash) -> None:
    page.goto(dash.url)
    # The first load's own 401 handling must be over before the stale key is planted.
    expect(page.locator("#auth-dialog")).to_be_visible()
    page.evaluate("sessionStorage.setItem('llm-proxy-admin-key', 'a-stale-key')")
    page.reload()
    expect(page.locator("#auth-dialog")).to_be_visible()
    expect(page.locator("#auth-message")).to_contain_text("refused")
    page.fill("#auth-key", ADMIN_KEY)
    page.click("#auth-submit")
    page.wait_for_selector("body[data-loaded]")
    assert page.evaluate("sessionStorage.getItem('llm-proxy-admin-key')") == ADMIN_KEY


def table_rows(page: Page, table: str) -> list[tuple[str, str, str]]:
    """(name, exact cost, shown cost) of each row of a by-key/model/provider table."""
    return page.eval_on_selector_all(
        f"#{table} tbody tr",
        """rows => rows.map(r => [r.querySelector('th').textContent,
                                  r.querySelector('[data-exact]').dataset.exact,
                                  r.querySelector('[data-exact]').firstChild.textContent])""",
    )


@pytest.mark.parametrize(("table", "field"), [("by-key", "key"), ("by-model", "model"), ("by-provider", "provider")])
def test_tables_by_key_model_and_provider_match_the_api(page: Page, dash: Dash, table: str, field: str) -> None:
    sign_in(page, dash)
    groups = dash.admin.get("/_llm/api/usage", since=DEFAULT_WINDOW, group_by=field)["groups"]
    assert len(groups) >= 2
    expected = [(g[field] if g[field] is not None else "(none)", g["cost_usd"], format_usd(g["cost_usd"])) for g in groups]
    assert [tuple(r) for r in table_rows(page, table)] == expected


def test_hostile_strings_are_shown_as_text(page: Page, dash: Dash) -> None:
    sign_in(page, dash)
    expect(page.locator("#by-model th", has_text=HOSTILE_MODEL)).to_have_count(1)
    expect(page.locator("#requests td", has_text=HOSTILE_MODEL).first).to_be_visible()
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None


def test_request_detail_shows_the_row_with_bodies_and_attempts(page: Page, dash: Dash) -> None:
    sign_in(page, dash)
    newest = dash.admin.get("/_llm/api/requests", limit=50)["requests"]
    target = next(r for r in newest if r["provider"] == "anthropic")
    row = dash.admin.get(f"/_llm/api/requests/{target['request_id']}")
    page.click(f'button[data-request-id="{target["request_id"]}"]')
    detail = page.locator("#detail-dialog")
    expect(detail).to_be_visible()
    expect(page.locator("#detail-h")).to_have_text(f"Request {row['request_id']}")
    for field in ("model", "key_id", "provider", "status", "input_tokens", "output_tokens", "cached_tokens"):
        assert page.locator(f'#detail-body dd[data-field="{field}"]').text_content() == str(row[field]), field
    assert page.locator('#detail-body dd[data-field="cost_usd"]').get_attribute("data-exact") == row["cost_usd"]
    request_body = page.locator("#detail-request-body").text_content()
    assert '"claude-sonnet-4-20250514"' in request_body and '"max_tokens": 64' in request_body
    response_body = page.locator("#detail-response-body").text_content()
    assert row["response_body"] is not None and '"usage"' in response_body
    page.click("#detail-close")
    expect(detail).to_be_hidden()


def key_row(page: Page, name: str) -> Locator:
    return page.locator(f'#keys tr[data-key="{name}"]')


def test_create_disable_enable_and_rotate_a_key(page: Page, dash: Dash) -> None:
    sign_in(page, dash)
    name = f"web-{secrets.token_hex(3)}"
    page.click("#create-key summary")
    form = page.locator("#create-key-form")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Requests per minute").fill("30")
    form.get_by_label("Budget (USD)").fill("12.50")
    form.get_by_label("Budget period").select_option("7d")
    form.get_by_label("Models (comma separated globs)").fill("gpt-4o-mini*, claude-*")
    form.get_by_role("button", name="Create key").click()

    expect(page.locator("#secret-box")).to_be_visible()
    secret = page.locator("#secret-value").input_value()
    assert secret.startswith("llmp-")
    expect(key_row(page, name)).to_be_visible()
    key = dash.admin.get(f"/_llm/api/keys/{name}")
    assert (key["state"], key["rpm"], key["budget"], key["period"], key["models"]) == (
        "active", 30, "12.50", "7d", ["gpt-4o-mini*", "claude-*"])
    assert "secret" not in key
    page.click("#secret-done")
    expect(page.locator("#secret-box")).to_be_hidden()
    assert page.locator("#secret-value").input_value() == ""

    # The new key works through the proxy...
    dash.secrets[name] = secret
    dash.chat(name)
    # ...until it is disabled from the page.
    key_row(page, name).locator('[data-action="toggle"]').click()
    expect(key_row(page, name).locator("[data-state]")).to_have_text("disabled")
    assert dash.admin.get(f"/_llm/api/keys/{name}")["state"] == "disabled"
    with pytest.raises((openai.AuthenticationError, openai.PermissionDeniedError)):
        dash.chat(name)

    key_row(page, name).locator('[data-action="toggle"]').click()
    expect(key_row(page, name).locator("[data-state]")).to_have_text("active")
    assert dash.admin.get(f"/_llm/api/keys/{name}")["state"] == "active"

    # Rotation asks first; the new secret is shown once and the old one stops working.
    key_row(page, name).locator('[data-action="rotate"]').click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.click("#confirm-ok")
    expect(page.locator("#secret-box")).to_be_visible()
    rotated = page.locator("#secret-value").input_value()
    assert rotated.startswith("llmp-") and rotated != secret
    with pytest.raises(openai.AuthenticationError):
        dash.chat(name)
    dash.secrets[name] = rotated
    dash.chat(name)

    # A name the API refuses: its message is shown by the form.
    page.click("#secret-done")
    form.get_by_label("Name").fill(name)
    form.get_by_role("button", name="Create key").click()
    expect(page.locator("#create-key-error")).not_to_be_empty()


def test_refreshes_itself(page: Page, dash: Dash) -> None:
    sign_in(page, dash)
    before_load = loaded_stamp(page)
    page.select_option("#window", "24h")
    wait_reload(page, before_load)
    shown = int(page.locator('#totals [data-total="requests"]').get_attribute("data-exact") or "0")
    before = dash.admin.get("/_llm/api/usage", since="1d")["totals"]["requests"]
    dash.chat("bob", input=10, output=5)
    dash.wait_rows(before + 1)
    # No reload and no click: the page's own timer (every 10 s) brings the new call in.
    page.wait_for_function(
        "(n) => Number(document.querySelector('#totals [data-total=\"requests\"]').dataset.exact) > n",
        arg=shown, timeout=25000)


def test_money_is_formatted_from_the_decimal_string(page: Page, dash: Dash) -> None:
    page.goto(dash.url)
    page.wait_for_function("window.llmDashboard !== undefined")
    samples = ["0", "0.0003678", "0.00036785", "0.1", "0.30000000000000004", "0.99999", "1", "12.5",
               "1234.565", "0.0000000012", "1.2E-7", "3E+2", "123456789012345678.995", "0.000000000049"]
    shown = page.evaluate("(xs) => xs.map(window.llmDashboard.formatUsd)", samples)
    assert shown == [format_usd(s) for s in samples]
    # beyond a double's precision: only string arithmetic gets this right
    assert shown[samples.index("123456789012345678.995")] == "$123,456,789,012,345,679.00"


def test_nothing_is_loaded_from_another_host(page: Page, dash: Dash) -> None:
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    sign_in(page, dash)
    expect(page.locator("#chart canvas")).to_have_count(1)  # the vendored chart library ran
    assert urls and all(u.startswith(dash.proxy.url + "/_llm/") for u in urls), urls
    assert page.evaluate("typeof uPlot") == "function"
    # Nor does the browser fetch /favicon.ico on its own (reverse mode would forward and meter it).
    page.wait_for_timeout(500)
    dash.settle()
    paths = [r["path"] for r in dash.admin.get("/_llm/api/requests", limit=500)["requests"]]
    assert not [p for p in paths if p and "favicon" in p], paths


def page_width(page: Page) -> int:
    return page.evaluate("document.scrollingElement.scrollWidth")


def test_fits_a_360px_phone(browser: Browser, dash: Dash) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True, locale="en-US")
    page = context.new_page()
    try:
        sign_in(page, dash)
        assert page_width(page) <= 362
        # Wide tables scroll inside their own boxes instead of widening the page.
        for table in ("requests", "keys", "by-model"):
            box = page.locator(f"#{table}").evaluate("t => t.parentElement.getBoundingClientRect().right")
            assert box <= 361, table
        assert page.locator("#chart canvas").bounding_box()["width"] <= 360
        page.locator("button[data-request-id]").first.click()
        expect(page.locator("#detail-dialog")).to_be_visible()
        dialog = page.locator("#detail-dialog").bounding_box()
        assert dialog["x"] >= 0 and dialog["x"] + dialog["width"] <= 360
        assert page_width(page) <= 362
    finally:
        context.close()


def test_uses_a_4k_screen(browser: Browser, dash: Dash) -> None:
    context = browser.new_context(viewport={"width": 3840, "height": 2160}, locale="en-US")
    page = context.new_page()
    try:
        sign_in(page, dash)
        assert page_width(page) <= 3840
        main = page.locator("#main").bounding_box()
        # Centred, and not a narrow column lost in the middle of the screen.
        assert abs(main["x"] - (3840 - main["x"] - main["width"])) <= 2
        assert main["width"] >= 1800
        assert float(page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")) >= 20
        assert page.locator("#chart canvas").bounding_box()["width"] >= 1700
    finally:
        context.close()


# A week of plausible traffic for the README's picture (USD per 1M input, output tokens).
HISTORY_PRICES = {"gpt-4o-mini": ("openai", "0.15", "0.60"), "gpt-4o": ("openai", "2.50", "10.00"),
                  "claude-sonnet-4-20250514": ("anthropic", "3.00", "15.00"),
                  "gemini-2.0-flash": ("gemini", "0.10", "0.40")}
HISTORY_KEYS = ("alice", "bob", "ci-bot", "support-bot")


def add_history(pg_url: str, table: str, days: int = 7, seed: int = 7) -> int:
    """Backdated rows inserted straight into the table (the usage rollup follows by its triggers).

    Only the screenshot needs them: a chart of a few seconds of test calls says nothing.
    """
    rng = random.Random(seed)
    now = datetime.now(UTC)
    rows = []
    for hour in range(days * 24, 0, -1):
        at = now - timedelta(hours=hour)
        busy = 1 + (4 if 8 <= at.hour <= 18 else 0) + (2 if at.weekday() < 5 else 0)
        for _ in range(rng.randint(0, busy)):
            model = rng.choice(list(HISTORY_PRICES))
            provider, price_in, price_out = HISTORY_PRICES[model]
            tokens_in, tokens_out = rng.randint(200, 6000), rng.randint(50, 1200)
            status = 200 if rng.random() > 0.04 else rng.choice((429, 500, 503))
            cost = (tokens_in * Decimal(price_in) + tokens_out * Decimal(price_out)) / 1_000_000
            rows.append((f"history-{secrets.token_hex(8)}", at + timedelta(seconds=rng.randint(0, 3599)),
                         rng.randint(300, 6000), provider, "chat", "POST", model, model, rng.choice(HISTORY_KEYS),
                         status, tokens_in, tokens_out, tokens_in + tokens_out, cost))
    with psycopg.connect(pg_url) as conn:
        conn.cursor().executemany(
            f"INSERT INTO {table} (request_id, ts, duration_ms, provider, api, method, model, response_model, key_id,"
            " status, input_tokens, output_tokens, total_tokens, cost_usd) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
    return len(rows)


def test_screenshot(page: Page, dash: Dash, pg_url: str, pg_table: str, tmp_path: Path) -> None:
    """The README's picture: the real page with this module's calls plus a week of backdated rows."""
    assert add_history(pg_url, pg_table) > 100
    sign_in(page, dash)
    # The page shows the history too, to the digit.
    assert_totals_match(page, dash.admin.get("/_llm/api/usage", since=DEFAULT_WINDOW)["totals"])
    target = REPO / "docs" / "dashboard.png" if os.environ.get("LLM_PROXY_UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1280 and height >= 800


def test_loopback_without_an_admin_key_needs_no_prompt(browser: Browser, tmp_path: Path, upstream: FakeUpstream) -> None:
    """No admin key set and a loopback browser: the page works without asking (here on the embedded SQLite)."""
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = Proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                   "--set", f"llm_db=sqlite:///{tmp_path / 'rows.db'}"], confdir=tmp_path / "conf",
                  env={"LLM_PROXY_ADMIN_KEY": ""}).start()
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    page = context.new_page()
    try:
        proxy.wait_for_log("llm-proxy writing rows to")
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-own-key", max_retries=0)
        for n in (1, 2):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                           extra_headers=scenario(input=100 * n, output=10 * n))
        deadline = time.monotonic() + 15
        while (totals := httpx.get(f"{proxy.url}/_llm/api/usage", params={"since": DEFAULT_WINDOW}).json()["totals"]
               )["requests"] < 2:
            assert time.monotonic() < deadline, totals
            time.sleep(0.1)
        page.goto(f"{proxy.url}/_llm/")
        page.wait_for_selector("body[data-loaded]")
        expect(page.locator("#auth-dialog")).to_be_hidden()
        assert totals["input_tokens"] == 300
        assert_totals_match(page, totals)
    finally:
        context.close()
        proxy.stop()


def test_format_reference_matches_examples() -> None:
    """The test's own reference formatter, pinned to hand-written answers."""
    assert [format_usd(s) for s in ("0.0003678", "1234.565", "0.99999", "0", "2")] == [
        "$0.0003678", "$1,234.57", "$1.00", "$0.00", "$2.00"]
    assert re.fullmatch(r"\$\d\.\d+", format_usd("0.1"))
