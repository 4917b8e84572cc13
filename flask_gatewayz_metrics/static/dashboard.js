/* Gateway metrics dashboard: polls the merged numbers (json?history=1 and health) and
 * renders them. Label values come from clients and are attacker-controlled: they are
 * only ever set as textContent, never parsed as HTML. */
"use strict";

const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);
const charts = {};

// ------------------------------------------------------------------ formatting
function seconds(value) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  if (value < 1e-3) return (value * 1e6).toFixed(value < 1e-5 ? 2 : 0) + " µs";
  if (value < 1) return (value * 1e3).toFixed(value < 0.01 ? 2 : 1) + " ms";
  if (value < 120) return value.toFixed(2) + " s";
  if (value < 7200) return (value / 60).toFixed(1) + " min";
  return (value / 3600).toFixed(1) + " h";
}
function count(value) {
  if (value === null || value === undefined) return "–";
  return Math.round(value).toLocaleString("en-US");
}
function ratio(value) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  return (value * 100).toFixed(value < 0.1 ? 2 : 1) + " %";
}
function rate(value) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  return value.toFixed(value < 10 ? 2 : 1) + " /s";
}
function usd(value) {
  if (value === null || value === undefined) return "–";
  return "$" + value.toFixed(value < 1 ? 4 : 2);
}
function sum(values) {
  return values.reduce((a, b) => a + (b || 0), 0);
}

// ------------------------------------------------------------------ DOM helpers
function cell(tag, text, cls) {
  const el = document.createElement(tag);
  el.textContent = text; // text only, never parsed as markup: label values are untrusted
  if (cls) el.className = cls;
  return el;
}

/** Replace a table's content: columns [title, ...], rows [[text, ...], ...]. */
function fillTable(id, columns, rows, emptyText) {
  const table = $(id);
  const head = document.createElement("thead");
  const headRow = document.createElement("tr");
  columns.forEach((c) => {
    const th = cell("th", c);
    th.scope = "col";
    headRow.appendChild(th);
  });
  head.appendChild(headRow);
  const body = document.createElement("tbody");
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("td", emptyText || "Nothing recorded yet.", "empty");
    td.colSpan = columns.length;
    tr.appendChild(td);
    body.appendChild(tr);
  }
  rows.forEach((row) => {
    const tr = document.createElement("tr");
    row.forEach((value, i) => {
      const isBad = value && typeof value === "object";
      const td = cell(i === 0 ? "th" : "td", isBad ? value.text : value, isBad ? "bad" : "");
      if (i === 0) td.scope = "row";
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  table.replaceChildren(head, body);
}

/** An error rate, highlighted when at or above 5 %. */
function errorRate(value) {
  const text = ratio(value);
  return value !== null && value !== undefined && value >= 0.05 ? { text: text } : text;
}

function setCards(items) {
  const cards = $("cards");
  const nodes = items.map(([name, value]) => {
    const div = document.createElement("div");
    div.appendChild(cell("dt", name));
    div.appendChild(cell("dd", value));
    return div;
  });
  cards.replaceChildren(...nodes);
}

// ------------------------------------------------------------------ charts
let timeRange = [0, 1];

function chart(id, series, data) {
  const el = $(id);
  const width = Math.max(280, el.clientWidth || 600);
  if (!charts[id]) {
    charts[id] = new uPlot({
      width: width,
      height: 220,
      series: [{}].concat(series),
      // The whole window, even while only some of its slots hold data.
      scales: { x: { time: true, range: () => timeRange } },
      axes: [{ space: 80 }, { size: 60 }],
      legend: { live: false },
    }, data, el);
  } else {
    charts[id].setData(data);
    if (Math.abs(charts[id].width - width) > 2) charts[id].setSize({ width: width, height: 220 });
  }
}

function drawHistory(history) {
  // With WINDOW_SECONDS = 0 the window is one slot since start: there is no history.
  $("history-section").hidden = !history.slot_seconds;
  if (!history.slot_seconds) return;
  const points = history.requests || [];
  const x = points.map((p) => p.start);
  const slot = history.slot_seconds || 60;
  const now = Date.now() / 1000;
  timeRange = [Math.min(x.length ? x[0] : now, now - slot * Math.max(1, history.slots || 5)), now];
  const perSecond = (p, key) => (p.seconds > 0 ? p[key] / p.seconds : null);
  chart("chart-rate", [
    { label: "requests/s", stroke: "#0550ae", width: 2 },
    { label: "errors/s", stroke: "#a40e26", width: 2 },
  ], [x, points.map((p) => perSecond(p, "requests")), points.map((p) => perSecond(p, "errors"))]);
  chart("chart-latency", [
    { label: "p50", stroke: "#116329", width: 2 },
    { label: "p95", stroke: "#7d4e00", width: 2 },
    { label: "p99", stroke: "#a40e26", width: 2 },
  ], [x, points.map((p) => p.p50), points.map((p) => p.p95), points.map((p) => p.p99)]);
  $("slot-hint").textContent = "(one point per " + seconds(history.slot_seconds) + " slot, merged across workers)";
}

// ------------------------------------------------------------------ sections
function render(doc, health) {
  const endpoints = Object.entries(doc.endpoints || {});
  const totalRequests = sum(endpoints.map(([, e]) => e.requests));
  const totalErrors = sum(endpoints.map(([, e]) => e.errors));
  const windowRequests = sum(endpoints.map(([, e]) => e.window.requests));
  const windowErrors = sum(endpoints.map(([, e]) => e.window.errors));
  const llm = doc.llm || {};
  const costs = Object.values(llm.cost_usd || {}).flatMap((m) => Object.values(m));
  const windowSeconds = doc.window_seconds || doc.uptime_seconds;

  $("empty").hidden = totalRequests > 0;
  $("window-hint").textContent = doc.window_seconds
    ? "(rates and percentiles over the last " + seconds(doc.window_seconds) + "; totals since start)"
    : "(since start)";
  setCards([
    ["Requests (total)", count(totalRequests)],
    ["Request rate", rate(windowSeconds > 0 ? windowRequests / Math.min(windowSeconds, doc.uptime_seconds || windowSeconds) : null)],
    ["Error rate", ratio(windowRequests > 0 ? windowErrors / windowRequests : null)],
    ["Errors (total)", count(totalErrors)],
    ["In flight", count(doc.in_flight)],
    ["Cache hit rate", ratio(doc.cache && doc.cache.hit_rate)],
    ["Cost (total)", usd(sum(costs))],
    ["Uptime", seconds(doc.uptime_seconds)],
  ]);

  fillTable("endpoints", ["Endpoint", "Requests", "Errors", "Error rate", "avg", "p50", "p95", "p99"],
    endpoints.map(([name, e]) => [name, count(e.requests), count(e.errors), errorRate(e.window.error_rate),
      seconds(e.latency_seconds.avg), seconds(e.latency_seconds.p50), seconds(e.latency_seconds.p95),
      seconds(e.latency_seconds.p99)]));

  const statusRows = [];
  endpoints.forEach(([name, e]) => Object.entries(e.status || {}).forEach(([status, n]) => {
    statusRows.push([name, status, Number(status) >= 500 ? { text: count(n) } : count(n)]);
  }));
  fillTable("statuses", ["Endpoint", "Status", "Responses"], statusRows);

  const fallbacks = llm.fallbacks || {};
  const limits = llm.rate_limit_remaining || {};
  fillTable("providers", ["Provider", "Requests", "Errors", "Error rate", "avg", "p95", "min", "max",
    "Fallbacks away", "Rate limit left"],
  Object.entries(doc.providers || {}).map(([name, p]) => [name, count(p.requests), count(p.errors),
    errorRate(p.error_rate), seconds(p.latency_seconds.avg), seconds(p.latency_seconds.p95),
    seconds(p.latency_seconds.min), seconds(p.latency_seconds.max),
    count(sum(Object.values(fallbacks[name] || {}))),
    Object.entries(limits[name] || {}).map(([k, v]) => k + ": " + count(v)).join(", ") || "–"]));

  const tokens = {};
  const cost = {};
  Object.values(llm.tokens || {}).forEach((byModel) => Object.entries(byModel).forEach(([model, dirs]) => {
    const t = (tokens[model] = tokens[model] || { input: 0, output: 0 });
    t.input += dirs.input || 0;
    t.output += dirs.output || 0;
  }));
  Object.values(llm.cost_usd || {}).forEach((byModel) => Object.entries(byModel).forEach(([model, c]) => {
    cost[model] = (cost[model] || 0) + c;
  }));
  fillTable("models", ["Model", "Requests", "Errors", "Error rate", "avg latency", "Input tokens",
    "Output tokens", "Cost"],
  Object.entries(doc.models || {}).map(([name, m]) => [name, count(m.requests), count(m.errors),
    errorRate(m.error_rate), seconds(m.latency_seconds.avg), count((tokens[name] || {}).input || 0),
    count((tokens[name] || {}).output || 0), usd(cost[name] || 0)]));

  const streamRows = [];
  Object.entries(llm.streams || {}).forEach(([provider, byModel]) => Object.entries(byModel).forEach(([model, s]) => {
    streamRows.push([provider + " / " + model, count(s.completed || 0), count(s.client_disconnect || 0),
      (s.error || 0) > 0 ? { text: count(s.error) } : count(0), seconds(s.first_chunk_avg_seconds)]);
  }));
  fillTable("streams", ["Provider / model", "Completed", "Client hung up", "Broken", "First chunk (avg)"],
    streamRows, "No streamed responses yet.");

  const deps = [
    ["Cache", count((doc.cache || {}).hits) + " hits, " + count((doc.cache || {}).misses) + " misses",
      ratio((doc.cache || {}).hit_rate)],
    ["Database", count((doc.database || {}).queries) + " queries", seconds((doc.database || {}).latency_avg_seconds) + " avg"],
  ];
  Object.entries(doc.external_apis || {}).forEach(([service, s]) => {
    deps.push(["External: " + service, count(s.calls) + " calls",
      s.errors > 0 ? { text: count(s.errors) + " errors" } : "0 errors"]);
  });
  fillTable("dependencies", ["Dependency", "Volume", "Quality"], deps);

  const storage = doc.storage || {};
  const storageRows = [];
  Object.entries(storage.dropped || {}).forEach(([reason, n]) => {
    if (n > 0) storageRows.push(["Dropped: " + reason, { text: count(n) }]);
  });
  Object.entries(storage.errors || {}).forEach(([reason, n]) => {
    if (n > 0) storageRows.push(["Storage error: " + reason, { text: count(n) }]);
  });
  (storage.problems || []).forEach((p) => storageRows.push(["Unreadable file: " + p.file, { text: p.reason }]));
  if (storage.error) storageRows.push(["This worker cannot write", { text: storage.error }]);
  $("storage-section").hidden = storageRows.length === 0;
  fillTable("storage", ["Problem", "Count / detail"], storageRows);

  const status = (health && health.status) || "unknown";
  const badge = $("status");
  badge.textContent = status;
  badge.className = "badge " + status;
  const reasons = (health && health.reasons) || [];
  $("reasons").replaceChildren(...reasons.map((r) => cell("li", r)));
  $("reasons").hidden = reasons.length === 0;
  drawHistory(doc.history || { requests: [] });
}

// ------------------------------------------------------------------ polling
async function fetchJson(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401 || response.status === 403) throw new Error("not authorised (" + response.status + ")");
  return response.json(); // health answers 503 with its report when unhealthy
}

async function refresh() {
  try {
    const [doc, health] = await Promise.all([fetchJson("json?history=1"), fetchJson("health")]);
    render(doc, health);
    $("failure").hidden = true;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    $("failure").textContent = "Could not update: " + error.message;
    $("failure").hidden = false;
    $("status").textContent = "no data";
    $("status").className = "badge failed";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
