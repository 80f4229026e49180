/* llm-proxy dashboard.
 *
 * Every string from the API (key and model names, bodies, error texts) is hostile
 * input: it only ever reaches the page as textContent or an attribute value, never
 * through innerHTML. Money arrives as exact decimal strings and is formatted as a
 * string (never summed or rounded as a float); the totals come from the API.
 */
"use strict";

(() => {
  const API = "/_llm/api";
  const TOKEN_KEY = "llm-proxy-admin-key";
  const REFRESH_MS = 10000;
  const BODY_SHOWN_MAX = 200000; // characters of a body rendered in the detail view

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    refreshing: null,
    timer: null,
    authOpen: false,
    requestsBefore: null,
    chart: null,
    chartData: null,
  };

  // ---------- DOM helpers (text only) ----------

  /** Builds an element; string children become text nodes, so data never becomes markup. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.classList.toggle("error", Boolean(isError));
  }

  // ---------- number and money formatting ----------

  const intFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

  function formatInt(n) {
    if (n === null || n === undefined || n === "") return "—";
    return intFormat.format(n);
  }

  /** Splits a decimal string (also "1.2E-7" as Python's Decimal may print) into exact digits. */
  function parseDecimal(text) {
    const m = /^\s*([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?\s*$/.exec(String(text));
    if (!m || (m[2] === "" && (m[3] || "") === "")) return null;
    let digits = (m[2] || "") + (m[3] || "");
    let point = (m[2] || "").length + (m[4] ? parseInt(m[4], 10) : 0);
    if (point < 0) { digits = "0".repeat(-point) + digits; point = 0; }
    if (point > digits.length) digits += "0".repeat(point - digits.length);
    let int = digits.slice(0, point).replace(/^0+/, "") || "0";
    let frac = digits.slice(point).replace(/0+$/, "");
    return { neg: m[1] === "-" && /[1-9]/.test(digits), int, frac };
  }

  /** Rounds (half up) the digit strings to `places` fraction digits, without floats. */
  function roundDecimal(d, places) {
    if (d.frac.length <= places) return { ...d, frac: d.frac.padEnd(places, "0") };
    const keep = d.int + d.frac.slice(0, places);
    const up = d.frac.charCodeAt(places) >= 53; // "5"
    let digits = keep.split("");
    if (up) {
      let i = digits.length - 1;
      while (i >= 0) {
        if (digits[i] === "9") { digits[i] = "0"; i--; }
        else { digits[i] = String.fromCharCode(digits[i].charCodeAt(0) + 1); break; }
      }
      if (i < 0) digits.unshift("1");
    }
    const s = digits.join("");
    const int = s.slice(0, s.length - places).replace(/^0+/, "") || "0";
    return { neg: d.neg, int, frac: s.slice(s.length - places) };
  }

  /**
   * "$1,234.57" for amounts of a dollar or more; smaller amounts keep four
   * significant digits ("$0.0003678"), since LLM calls are often fractions of a cent.
   */
  function formatUsd(text) {
    if (text === null || text === undefined) return "—";
    const d = parseDecimal(text);
    if (!d) return String(text);
    let places = 2;
    if (d.int === "0") {
      const lead = d.frac.search(/[1-9]/);
      places = lead < 0 ? 2 : Math.min(Math.max(lead + 4, 2), 10);
    }
    const r = roundDecimal(d, places);
    const frac = d.int === "0" ? r.frac.replace(/0+$/, "").padEnd(2, "0") : r.frac;
    const int = r.int.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    const neg = r.neg && /[1-9]/.test(r.int + r.frac);
    return (neg ? "-$" : "$") + int + (frac ? "." + frac : "");
  }

  /** A money cell: formatted text, the exact string in the title and a data attribute. */
  function moneyCell(tag, text) {
    return el(tag, { class: "num", title: text ?? "unknown", "data-exact": text ?? "" }, formatUsd(text));
  }

  /** Calls without a price add nothing to a cost; say how many there were. */
  function withUnpriced(cell, unpriced) {
    if (unpriced > 0) cell.append(el("span", { class: "unpriced" }, `+ ${formatInt(unpriced)} unpriced`));
    return cell;
  }

  /** "2027-01-01 00:00 UTC": an expiry is an instant, shown unambiguously. */
  function formatUtc(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function formatTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  // ---------- API ----------

  class AuthError extends Error {}

  async function api(path, options = {}) {
    const headers = { accept: "application/json", ...(options.headers || {}) };
    if (state.token) headers.authorization = "Bearer " + state.token;
    if (options.json !== undefined) headers["content-type"] = "application/json";
    const resp = await fetch(API + path, {
      method: options.method || "GET",
      headers,
      body: options.json !== undefined ? JSON.stringify(options.json) : undefined,
      cache: "no-store",
      credentials: "omit",
    });
    let data = null;
    if (resp.status !== 204) {
      const text = await resp.text();
      try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    }
    if (resp.status === 401 || resp.status === 403) {
      throw new AuthError(errorMessage(data) || `HTTP ${resp.status}`);
    }
    if (!resp.ok) {
      const err = new Error(errorMessage(data) || `HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  function errorMessage(data) {
    return data && data.error && typeof data.error.message === "string" ? data.error.message : "";
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    const s = q.toString();
    return s ? "?" + s : "";
  }

  // ---------- auth ----------

  function askForKey(message) {
    const dialog = $("auth-dialog");
    if (message) $("auth-message").textContent = message;
    $("auth-key").value = "";
    if (!dialog.open) dialog.showModal();
    state.authOpen = true;
    $("auth-key").focus();
  }

  $("auth-form").addEventListener("submit", (event) => {
    const key = $("auth-key").value.trim();
    if (!key) { event.preventDefault(); return; }
    state.token = key;
    sessionStorage.setItem(TOKEN_KEY, key);
    state.authOpen = false;
    $("sign-out").hidden = false;
    refresh();
  });

  $("auth-dialog").addEventListener("cancel", (event) => event.preventDefault()); // nothing to show without it

  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = "";
    $("sign-out").hidden = true;
    askForKey("Enter the admin key.");
  });

  function handleError(err, where) {
    if (err instanceof AuthError) {
      sessionStorage.removeItem(TOKEN_KEY);
      const had = Boolean(state.token);
      state.token = "";
      $("sign-out").hidden = true;
      askForKey(had ? `The proxy refused that key: ${err.message}` : `The proxy asks for its admin key: ${err.message}`);
      setStatus("Waiting for the admin key.");
      return;
    }
    setStatus(`${where}: ${err.message}`, true);
  }

  // ---------- window ----------

  function windowParams() {
    const choice = $("window").value;
    if (choice !== "custom") return { since: choice };
    const since = $("custom-since").value;
    const until = $("custom-until").value;
    return {
      since: since ? new Date(since).toISOString() : "7d",
      until: until ? new Date(until).toISOString() : undefined,
    };
  }

  function resolution(params) {
    const chosen = $("resolution").value;
    if (chosen !== "auto") return chosen;
    if (params.since === "24h") return "hour";
    if ($("window").value === "custom") {
      const from = new Date(params.since).getTime();
      const to = params.until ? new Date(params.until).getTime() : Date.now();
      if (to - from <= 3 * 86400e3) return "hour";
    }
    return "day";
  }

  $("window").addEventListener("change", () => {
    const custom = $("window").value === "custom";
    $("custom-range").hidden = !custom;
    if (custom) {
      if (!$("custom-since").value) {
        const now = new Date();
        const toLocal = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60e3).toISOString().slice(0, 16);
        $("custom-since").value = toLocal(new Date(now.getTime() - 3 * 86400e3));
        $("custom-until").value = toLocal(now);
      }
      return; // applied with the button
    }
    refresh();
  });
  $("resolution").addEventListener("change", () => refresh());
  $("window-form").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  $("refresh-now").addEventListener("click", () => refresh());

  // ---------- rendering: totals, chart, group tables ----------

  function renderTotals(answer) {
    const totals = answer.totals || {};
    for (const dd of document.querySelectorAll("#totals [data-total]")) {
      const field = dd.dataset.total;
      if (field === "cost_usd") {
        dd.textContent = formatUsd(totals.cost_usd);
        dd.title = totals.cost_usd ?? "";
        dd.dataset.exact = totals.cost_usd ?? "";
      } else {
        dd.textContent = formatInt(totals[field]);
        dd.dataset.exact = totals[field] ?? "";
      }
    }
    const label = $("window").value === "custom"
      ? `${formatTime(answer.since)} – ${formatTime(answer.until)}`
      : $("window").selectedOptions[0].textContent.toLowerCase();
    $("window-label").textContent = `(${label})`;
  }

  function bucketStart(text, unit) {
    // "YYYY-MM-DD" or "YYYY-MM-DDTHH:00Z", both UTC
    const iso = unit === "day" ? text + "T00:00:00Z" : text.replace(/Z$/, ":00Z");
    return Date.parse(iso) / 1000;
  }

  function buildSeries(answer, unit) {
    const step = unit === "day" ? 86400 : 3600;
    const byTime = new Map();
    for (const g of answer.groups || []) {
      const t = bucketStart(String(g[unit]), unit);
      if (!isNaN(t)) byTime.set(t, g);
    }
    // Every bucket of the window gets a point, so quiet periods show as zero.
    const since = Math.floor(Date.parse(answer.since) / 1000 / step) * step;
    const until = Math.floor(Date.parse(answer.until) / 1000 / step) * step;
    const xs = [];
    if (!isNaN(since) && !isNaN(until) && (until - since) / step <= 5000) {
      for (let t = since; t <= until; t += step) xs.push(t);
    }
    for (const t of byTime.keys()) if (!xs.includes(t)) xs.push(t);
    xs.sort((a, b) => a - b);
    const cost = [], input = [], output = [], costText = [];
    for (const t of xs) {
      const g = byTime.get(t);
      costText.push(g ? g.cost_usd : "0");
      cost.push(g ? Number(g.cost_usd) : 0); // plotted position only; labels use costText
      input.push(g ? g.input_tokens || 0 : 0);
      output.push(g ? g.output_tokens || 0 : 0);
    }
    return { xs, cost, input, output, costText, empty: byTime.size === 0 };
  }

  function remPx() {
    return parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
  }

  function chartSize() {
    const box = $("chart");
    const width = Math.max(240, box.clientWidth - 16);
    const height = Math.round(Math.min(20 * remPx(), Math.max(200, width * 0.3)));
    return { width, height };
  }

  function renderChart(answer, unit) {
    const s = buildSeries(answer, unit);
    state.chartData = s;
    $("chart-empty").hidden = !s.empty;
    const data = [s.xs, s.cost, s.input, s.output];
    if (typeof uPlot === "undefined") {
      $("chart").textContent = "The chart library did not load.";
      return;
    }
    const key = unit;
    if (state.chart && state.chart._unit === key) {
      state.chart.setData(data);
      return;
    }
    if (state.chart) state.chart.destroy();
    $("chart").textContent = "";
    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    const axisStroke = color("--fg-muted");
    const grid = { stroke: color("--grid"), width: 1 };
    const font = `${Math.round(remPx() * 0.8)}px system-ui, sans-serif`;
    const opts = {
      ...chartSize(),
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      cursor: { points: { size: 6 } },
      legend: { live: true },
      scales: { x: { time: true }, usd: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.1 : 1] }, tok: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.1 : 1] } },
      axes: [
        { stroke: axisStroke, grid, ticks: grid, font },
        { scale: "usd", stroke: axisStroke, grid, ticks: grid, font, size: Math.round(remPx() * 4.5), values: (u, vals) => vals.map((v) => "$" + trimFloat(v)) },
        { scale: "tok", side: 1, stroke: axisStroke, grid: { show: false }, ticks: grid, font, size: Math.round(remPx() * 3.5), values: (u, vals) => vals.map(compactInt) },
      ],
      series: [
        { label: unit === "day" ? "Day (UTC)" : "Hour (UTC)",
          value: (u, v) => v === null ? "—" : new Date(v * 1e3).toISOString().slice(0, unit === "day" ? 10 : 16).replace("T", " ") },
        { label: "Cost", scale: "usd", stroke: color("--series-cost"), fill: color("--series-cost-fill"), width: 2,
          value: (u, v, si, idx) => idx === null || idx === undefined ? "—" : formatUsd(state.chartData.costText[idx]) },
        { label: "Input tokens", scale: "tok", stroke: color("--series-in"), width: 2, value: (u, v) => v === null ? "—" : formatInt(v) },
        { label: "Output tokens", scale: "tok", stroke: color("--series-out"), width: 2, dash: [6, 4], value: (u, v) => v === null ? "—" : formatInt(v) },
      ],
    };
    state.chart = new uPlot(opts, data, $("chart"));
    state.chart._unit = key;
  }

  function trimFloat(v) {
    // axis ticks only (positions, not amounts shown as figures)
    return Number(v.toPrecision(3)).toString();
  }

  function compactInt(v) {
    if (v >= 1e9) return trimFloat(v / 1e9) + "G";
    if (v >= 1e6) return trimFloat(v / 1e6) + "M";
    if (v >= 1e3) return trimFloat(v / 1e3) + "k";
    return String(Math.round(v));
  }

  if (typeof ResizeObserver !== "undefined") {
    new ResizeObserver(() => { if (state.chart) state.chart.setSize(chartSize()); }).observe($("chart"));
  }

  const GROUP_COLUMNS = [
    ["requests", "Requests", formatInt],
    ["errors", "Errors", formatInt],
    ["input_tokens", "Input", formatInt],
    ["output_tokens", "Output", formatInt],
  ];

  function renderGroupTable(table, field, label, answer) {
    const head = el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, label),
      el("th", { scope: "col", class: "num" }, "Cost"),
      GROUP_COLUMNS.map(([, title]) => el("th", { scope: "col", class: "num" }, title)),
    ));
    const groups = answer.groups || [];
    const body = el("tbody", {}, groups.length ? groups.map((g) => el("tr", {},
      el("th", { scope: "row", class: "name" }, g[field] === null || g[field] === undefined ? "(none)" : String(g[field])),
      withUnpriced(moneyCell("td", g.cost_usd), g.unpriced),
      GROUP_COLUMNS.map(([name, , fmt]) => el("td", { class: "num" }, fmt(g[name]))),
    )) : el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No calls in this window.")));
    table.replaceChildren(head, body);
  }

  // ---------- recent requests ----------

  const REQUEST_COLUMNS = ["Time", "Key", "Provider", "Model", "Status", "Input", "Output", "Cost", "ms"];

  function requestRow(r) {
    const failed = (r.status !== null && r.status >= 400) || Boolean(r.error);
    return el("tr", { class: failed ? "failed" : null },
      el("td", {}, el("button", {
        type: "button", class: "link", "data-request-id": r.request_id,
        "aria-label": `Details of request ${r.request_id}`, title: r.ts || "",
        onclick: () => openRequest(r.request_id),
      }, formatTime(r.ts))),
      el("td", { class: "name" }, r.key_id ?? "—"),
      el("td", {}, r.provider ?? "—"),
      el("td", { class: "name" }, r.model ?? "—"),
      el("td", { class: failed ? "num bad" : "num" }, r.status ?? (r.error ? "error" : "—")),
      el("td", { class: "num" }, formatInt(r.input_tokens)),
      el("td", { class: "num" }, formatInt(r.output_tokens)),
      moneyCell("td", r.cost_usd),
      el("td", { class: "num" }, formatInt(r.duration_ms)),
    );
  }

  function requestParams(extra) {
    return {
      ...windowParams(),
      limit: 50,
      key: $("filter-key").value.trim(),
      model: $("filter-model").value.trim(),
      status: $("filter-status").value.trim(),
      ...extra,
    };
  }

  function renderRequests(answer, append) {
    const table = $("requests");
    let body = table.tBodies[0];
    if (!append || !body) {
      const head = el("thead", {}, el("tr", {}, REQUEST_COLUMNS.map((c, i) =>
        el("th", { scope: "col", class: i >= 5 ? "num" : null }, c))));
      body = el("tbody");
      table.replaceChildren(head, body);
    }
    const rows = answer.requests || [];
    if (!append && !rows.length) {
      body.append(el("tr", {}, el("td", { colspan: REQUEST_COLUMNS.length, class: "muted" }, "No requests in this window.")));
    }
    for (const r of rows) body.append(requestRow(r));
    state.requestsBefore = answer.next_before ?? null;
    $("requests-more").hidden = state.requestsBefore === null;
  }

  $("requests-filter").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  $("requests-more").addEventListener("click", async () => {
    try {
      renderRequests(await api("/requests" + query(requestParams({ before: state.requestsBefore }))), true);
    } catch (err) { handleError(err, "Requests"); }
  });

  // ---------- one request ----------

  function pretty(value) {
    if (value === null || value === undefined) return "(not stored)";
    const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    return text.length > BODY_SHOWN_MAX ? text.slice(0, BODY_SHOWN_MAX) + `\n… (${text.length - BODY_SHOWN_MAX} more characters)` : text;
  }

  const DETAIL_FIELDS = [
    ["request_id", "Request id"], ["ts", "Time (UTC)"], ["status", "Status"], ["error", "Error"],
    ["provider", "Provider"], ["api", "API"], ["method", "Method"], ["path", "Path"], ["upstream_url", "Upstream URL"],
    ["model", "Model asked"], ["response_model", "Model answered"], ["fallback_from", "Fallback from"],
    ["key_id", "Key"], ["client_addr", "Client"], ["streaming", "Streaming"],
    ["duration_ms", "Duration (ms)"], ["ttft_ms", "Time to first token (ms)"],
    ["input_tokens", "Input tokens"], ["cached_tokens", "Cached tokens"], ["cache_write_tokens", "Cache write tokens"],
    ["output_tokens", "Output tokens"], ["reasoning_tokens", "Reasoning tokens"], ["total_tokens", "Total tokens"],
    ["cost_usd", "Cost (USD)"],
  ];

  function renderAttempts(attempts) {
    if (!Array.isArray(attempts) || !attempts.length) return el("p", { class: "muted" }, "One attempt (no retries or fallbacks).");
    const objects = attempts.every((a) => a && typeof a === "object" && !Array.isArray(a));
    if (!objects) return el("pre", { class: "body" }, pretty(attempts));
    const cols = [...new Set(attempts.flatMap((a) => Object.keys(a)))];
    return el("div", { class: "table-wrap" }, el("table", { class: "data", id: "detail-attempts" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "#"), cols.map((c) => el("th", { scope: "col" }, c)))),
      el("tbody", {}, attempts.map((a, i) => el("tr", {}, el("td", {}, String(i + 1)),
        cols.map((c) => el("td", {}, a[c] === null || a[c] === undefined ? "—" : typeof a[c] === "object" ? JSON.stringify(a[c]) : String(a[c])))))),
    ));
  }

  async function openRequest(requestId) {
    const dialog = $("detail-dialog");
    const body = $("detail-body");
    $("detail-h").textContent = "Request";
    body.replaceChildren(el("p", { class: "muted" }, "Loading…"));
    if (!dialog.open) dialog.showModal();
    try {
      const row = await api("/requests/" + encodeURIComponent(requestId));
      $("detail-h").textContent = `Request ${row.request_id}`;
      const facts = el("dl", { class: "facts" }, DETAIL_FIELDS.filter(([f]) => f in row).map(([f, label]) => [
        el("dt", {}, label),
        f === "cost_usd"
          ? el("dd", { title: row[f] ?? "unknown", "data-field": f, "data-exact": row[f] ?? "" }, row[f] === null ? "unknown (no price)" : formatUsd(row[f]))
          : el("dd", { "data-field": f }, row[f] === null || row[f] === undefined ? "—" : String(row[f])),
      ]));
      body.replaceChildren(
        facts,
        el("h3", {}, "Attempts"), renderAttempts(row.attempts),
        el("h3", {}, "Request body"), el("pre", { class: "body", id: "detail-request-body", tabindex: 0 }, pretty(row.request_body)),
        el("h3", {}, "Response body"), el("pre", { class: "body", id: "detail-response-body", tabindex: 0 }, pretty(row.response_body)),
      );
    } catch (err) {
      if (err instanceof AuthError) { dialog.close(); handleError(err, "Request"); return; }
      body.replaceChildren(el("p", { class: "error" }, `Could not load the request: ${err.message}`));
    }
  }

  $("detail-close").addEventListener("click", () => $("detail-dialog").close());

  // ---------- keys ----------

  function confirmAction(message, okLabel) {
    const dialog = $("confirm-dialog");
    $("confirm-message").textContent = message;
    $("confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    });
  }

  function limitsText(k) {
    const parts = [];
    if (k.rpm !== null && k.rpm !== undefined) parts.push(`${formatInt(k.rpm)} rpm`);
    if (k.tpm !== null && k.tpm !== undefined) parts.push(`${formatInt(k.tpm)} tpm`);
    if (k.parallel !== null && k.parallel !== undefined) parts.push(`${formatInt(k.parallel)} parallel`);
    return parts.length ? parts.join(", ") : "none";
  }

  function showSecret(name, secret) {
    $("secret-name").textContent = name;
    $("secret-value").value = secret;
    $("secret-box").hidden = false;
    $("secret-value").focus();
    $("secret-value").select();
  }

  $("secret-copy").addEventListener("click", async () => {
    const input = $("secret-value");
    try { await navigator.clipboard.writeText(input.value); setStatus("Secret copied."); }
    catch { input.select(); setStatus("Select the secret and copy it (the clipboard is not available here)."); }
  });
  $("secret-done").addEventListener("click", () => {
    $("secret-value").value = "";
    $("secret-box").hidden = true;
  });

  async function keyAction(action, k) {
    try {
      if (action === "toggle") {
        const disable = k.state !== "disabled";
        await api("/keys/" + encodeURIComponent(k.name), { method: "PATCH", json: { disabled: disable } });
        setStatus(`Key ${k.name} ${disable ? "disabled" : "enabled"}.`);
      } else if (action === "rotate") {
        if (!(await confirmAction(`Rotate key "${k.name}"? Its current secret stops working at once.`, "Rotate"))) return;
        const answer = await api("/keys/" + encodeURIComponent(k.name) + "/rotate", { method: "POST" });
        showSecret(k.name, answer.secret);
        setStatus(`Key ${k.name} rotated.`);
      }
      await refreshKeys();
    } catch (err) { handleError(err, `Key ${k.name}`); }
  }

  function renderKeys(answer) {
    const keys = answer.keys || [];
    const head = el("thead", {}, el("tr", {},
      ["Name", "Prefix", "State", "Limits", "Budget", "Models", "Expires", "Spend"].map((c) =>
        el("th", { scope: "col", class: c === "Spend" ? "num" : null }, c)),
      el("th", { scope: "col" }, "Actions")));
    const body = el("tbody", {}, keys.length ? keys.map((k) => el("tr", { "data-key": k.name },
      el("th", { scope: "row", class: "name" }, k.name),
      el("td", { class: "mono" }, k.prefix ? k.prefix + "…" : "—"),
      el("td", {}, el("span", { class: `badge ${k.state}`, "data-state": k.state }, k.state)),
      el("td", {}, limitsText(k)),
      el("td", { title: k.budget ?? "" }, k.budget === null || k.budget === undefined ? "none" : `${formatUsd(k.budget)} / ${k.period || "monthly"}`),
      el("td", { class: "name" }, Array.isArray(k.models) && k.models.length ? k.models.join(", ") : "all"),
      el("td", { title: k.expires || "" }, k.expires ? formatUtc(k.expires) : "never"),
      moneyCell("td", k.spend_usd),
      el("td", { class: "actions" },
        el("button", { type: "button", class: "secondary", "data-action": "toggle",
          "aria-label": `${k.state === "disabled" ? "Enable" : "Disable"} key ${k.name}`,
          onclick: () => keyAction("toggle", k) }, k.state === "disabled" ? "Enable" : "Disable"),
        el("button", { type: "button", class: "secondary", "data-action": "rotate",
          "aria-label": `Rotate key ${k.name}`, onclick: () => keyAction("rotate", k) }, "Rotate"),
      ),
    )) : el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No virtual keys yet: the proxy runs in passthrough mode.")));
    $("keys").replaceChildren(head, body);
  }

  async function refreshKeys() {
    try {
      renderKeys(await api("/keys"));
      $("keys-note").hidden = true;
    } catch (err) {
      if (err instanceof AuthError) throw err;
      $("keys-note").textContent = `Keys: ${err.message}`;
      $("keys-note").hidden = false;
    }
  }

  $("create-key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const f = new FormData(form);
    const body = { name: String(f.get("name")).trim() };
    for (const field of ["rpm", "tpm", "parallel"]) {
      const v = String(f.get(field) || "").trim();
      if (v) body[field] = parseInt(v, 10);
    }
    const budget = String(f.get("budget") || "").trim();
    if (budget) body.budget = budget; // a decimal string, exact
    const period = String(f.get("period") || "");
    if (period) body.period = period;
    const models = String(f.get("models") || "").split(",").map((m) => m.trim()).filter(Boolean);
    if (models.length) body.models = models;
    const expires = String(f.get("expires") || "");
    if (expires) body.expires = expires;
    $("create-key-error").textContent = "";
    try {
      const created = await api("/keys", { method: "POST", json: body });
      form.reset();
      showSecret(created.name, created.secret);
      setStatus(`Key ${created.name} created.`);
      await refreshKeys();
    } catch (err) {
      if (err instanceof AuthError) { handleError(err, "Create key"); return; }
      $("create-key-error").textContent = err.message;
    }
  });

  // ---------- refresh loop ----------

  async function load() {
    const params = windowParams();
    const unit = resolution(params);
    const [overTime, byKey, byModel, byProvider, requests] = await Promise.all([
      api("/usage" + query({ ...params, group_by: unit })),
      api("/usage" + query({ ...params, group_by: "key" })),
      api("/usage" + query({ ...params, group_by: "model" })),
      api("/usage" + query({ ...params, group_by: "provider" })),
      api("/requests" + query(requestParams())),
    ]);
    renderTotals(overTime);
    renderChart(overTime, unit);
    renderGroupTable($("by-key"), "key", "Key", byKey);
    renderGroupTable($("by-model"), "model", "Model", byModel);
    renderGroupTable($("by-provider"), "provider", "Provider", byProvider);
    renderRequests(requests, false);
    await refreshKeys();
    document.body.dataset.loaded = String(Date.now());
    setStatus(`Updated ${new Date().toLocaleTimeString()}.`);
  }

  function refresh() {
    if (state.authOpen) return Promise.resolve();
    if (state.refreshing) return state.refreshing; // one load at a time
    state.refreshing = load()
      .catch((err) => handleError(err, "Refresh"))
      .finally(() => { state.refreshing = null; });
    return state.refreshing;
  }

  function tick() {
    // Paused while the tab is hidden or a dialog is in use, so nothing moves under the user.
    if (document.hidden || $("detail-dialog").open || $("confirm-dialog").open) return;
    refresh();
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  state.timer = setInterval(tick, REFRESH_MS);
  $("sign-out").hidden = !state.token;

  // For the browser tests and for anyone checking the formatting in the console.
  window.llmDashboard = { formatUsd, refresh };
  refresh();
})();
