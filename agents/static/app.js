// riverbed worker page: models, their metric over time with version boundaries, drift and
// rollback markers, and their history. Polls the worker's JSON API (see /openapi.json).
// Everything from the server is written with textContent (never as HTML): a rollback
// reason or an annotation is user text.
"use strict";

const REFRESH_MS = 2000;
const HISTORY_ROWS = 200;
const COLORS = { metric: "#1565c0", overall: "#90a4c0", rollback: "#d32f2f",
                 drift: "#ef6c00", claim: "#757575", snapshot: "#00897b" };

const token = (() => {
  const match = /token=([^&]+)/.exec(location.hash);
  if (match) { sessionStorage.setItem("riverbed-token", decodeURIComponent(match[1])); }
  return sessionStorage.getItem("riverbed-token");
})();

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).error; } catch (e) { /* not JSON */ }
    throw new Error(path + ": " + response.status + " " + detail);
  }
  return response.json();
}

const state = new Map();  // model name -> {section, entries, points, versions, chart}

function text(el, value) { el.textContent = value === null || value === undefined ? "" : String(value); }
function time(ms) {  // any 64-bit value can be read from the history: no date, the number
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? `${ms} ms` : date.toISOString().replace("T", " ").slice(0, 19);
}
function fmt(value) { return typeof value === "number" ? (Math.round(value * 1e4) / 1e4).toString() : String(value); }

function metricName(model) {
  const names = Object.keys(model.version_metrics || model.metrics || {});
  const preferred = model.task === "regression" ? "MAE" : "Accuracy";
  return names.includes(preferred) ? preferred : (names[0] || preferred);
}

function sectionFor(model) {
  let s = state.get(model.name);
  if (s) { return s; }
  const node = document.getElementById("model-template").content.firstElementChild.cloneNode(true);
  node.dataset.model = model.name;
  document.getElementById("models").appendChild(node);
  s = { section: node, entries: new Map(), points: [], lastTime: 0, versions: [], chart: null,
        metric: metricName(model) };
  state.set(model.name, s);
  return s;
}

function markers(s) {
  const found = [];
  for (const e of s.entries.values()) {
    if (e.kind === "rollback") { found.push({ kind: "rollback", time: e.time, label: "rollback to " + e.to_seq }); }
    else if (e.kind === "drift") { found.push({ kind: "drift", time: e.time, label: "drift at " + e.seq }); }
    else if (e.kind === "claimed" && !e.stale) { found.push({ kind: "claim", time: e.time, label: "epoch " + e.epoch }); }
    else if (e.kind === "snapshot" && e.accepted && e.purpose === "checkpoint") {
      found.push({ kind: "snapshot", time: e.time, label: "snapshot at " + e.snapshot_seq });
    }
  }
  return found;
}

function markerPlugin(s) {
  return { hooks: { draw: [(u) => {
    const ctx = u.ctx;
    const top = u.bbox.top, height = u.bbox.height;
    for (const m of s.markerList || []) {
      const x = Math.round(u.valToPos(m.time / 1000, "x", true));
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) { continue; }
      ctx.save();
      ctx.strokeStyle = COLORS[m.kind];
      ctx.lineWidth = m.kind === "rollback" ? 3 : 2;
      ctx.setLineDash(m.kind === "drift" ? [6, 4] : m.kind === "claim" ? [2, 4] : []);
      const from = m.kind === "snapshot" ? top + height - 12 : top;
      ctx.beginPath(); ctx.moveTo(x, from); ctx.lineTo(x, top + height); ctx.stroke();
      ctx.restore();
    }
  }] } };
}

function drawChart(s) {
  const el = s.section.querySelector(".chart");
  const xs = s.points.map((p) => p.time / 1000);
  // a report before the first learn step has no metric yet (River's 0.0): not drawn
  const value = (p, key) => (p.seq > 0 ? (p[key] || {})[s.metric] ?? null : null);
  const version = s.points.map((p) => value(p, "version_metrics"));
  const overall = s.points.map((p) => value(p, "metrics"));
  const times = xs.concat((s.markerList || []).map((m) => m.time / 1000));
  const lo = times.length ? Math.min(...times) : Date.now() / 1000 - 60;
  const hi = times.length ? Math.max(...times) : Date.now() / 1000;
  const pad = Math.max((hi - lo) * 0.02, 1);
  const data = [xs, version, overall];
  const width = Math.max(el.clientWidth || 800, 400);
  if (!s.chart) {
    s.chart = new uPlot({
      width, height: 260, plugins: [markerPlugin(s)],
      scales: { x: { time: true, range: () => [s.lo, s.hi] } },
      series: [{}, { label: s.metric + " (version)", stroke: COLORS.metric, width: 2, spanGaps: true },
               { label: s.metric + " (since start)", stroke: COLORS.overall, width: 1, spanGaps: true }],
      axes: [{}, { label: s.metric, size: 60 }],
      legend: { show: false },
    }, data, el);
  }
  s.lo = lo - pad; s.hi = hi + pad;
  s.chart.setData(data);
  el.dataset.points = String(xs.length);
}

function renderMarkers(s) {
  s.markerList = markers(s);
  const counts = { rollback: 0, drift: 0, claim: 0, snapshot: 0 };
  const list = s.section.querySelector(".markers");
  list.replaceChildren();
  for (const m of s.markerList) {
    counts[m.kind] += 1;
    const li = document.createElement("li");
    li.className = "marker marker-" + m.kind;
    li.dataset.kind = m.kind; li.dataset.time = String(m.time);
    text(li, m.label);
    list.appendChild(li);
  }
  for (const kind of Object.keys(counts)) { text(s.section.querySelector(".count-" + kind), counts[kind]); }
}

function detail(e) {
  switch (e.kind) {
    case "learned": return e.examples + " examples in " + e.batches + " batch(es), seq " + e.seq_from + ".." + e.seq;
    case "snapshot": return e.purpose + " at seq " + e.snapshot_seq + (e.accepted ? "" : " (refused)");
    case "rollback": return "from seq " + e.from_seq + " to " + e.to_seq + ": " + e.reason;
    case "drift": case "integrity": case "annotation": return e.note;
    case "claimed": return "owner " + e.owner + (e.stale ? " (stale)" : "");
    case "created": return "river " + e.river_version;
    case "ignored": return e.records + " record(s) ignored: " + e.why;
    default: return "";
  }
}

function renderTables(s) {
  const rows = Array.from(s.entries.values()).sort((a, b) => b.offset - a.offset).slice(0, HISTORY_ROWS);
  const body = s.section.querySelector("table.history tbody");
  body.replaceChildren(...rows.map((e) => {
    const tr = document.createElement("tr");
    tr.className = "entry kind-" + e.kind;
    tr.dataset.kind = e.kind;
    for (const [value, mono] of [[e.offset, true], [time(e.time), false], [e.kind, false],
                                 [e.epoch, true], [e.lineage, true], [e.seq, true], [detail(e), false]]) {
      const td = document.createElement("td");
      if (mono) { td.className = "mono"; }
      text(td, value);
      tr.appendChild(td);
    }
    return tr;
  }));
  text(s.section.querySelector(".history-note"), s.entries.size > HISTORY_ROWS ? "newest " + HISTORY_ROWS + " of " + s.entries.size : "");
  const versions = s.section.querySelector("table.versions tbody");
  versions.replaceChildren(...s.versions.map((v) => {
    const tr = document.createElement("tr");
    tr.className = "version";
    const metrics = Object.entries(v.metrics).map(([k, x]) => k + " " + fmt(x)).join(", ");
    for (const value of [v.lineage, v.from_seq + ".." + v.to_seq, time(v.started), v.drifts,
                         v.snapshots, metrics, v.reason || "original"]) {
      const td = document.createElement("td");
      text(td, value);
      tr.appendChild(td);
    }
    return tr;
  }));
}

async function refreshModel(model) {
  const s = sectionFor(model);
  text(s.section.querySelector(".name"), model.name);
  text(s.section.querySelector(".facts"), "seq " + model.seq + " · lineage " + model.lineage +
       " · epoch " + model.epoch + " · " + model.role + " · " + s.metric + " " +
       fmt((model.version_metrics || {})[s.metric] ?? "–"));
  text(s.section.querySelector(".metric-name"), s.metric);
  const name = encodeURIComponent(model.name);
  // from just before the newest known entry: a learn run grows in place
  let after = s.entries.size ? Math.max(...s.entries.keys()) - 1 : -1;
  for (let pages = 0; pages < 20; pages++) {
    const page = await api("/models/" + name + "/history?limit=1000&after=" + after);
    for (const e of page.entries) { s.entries.set(e.offset, e); }
    s.versions = page.versions;
    if (page.next_after === null) { break; }
    after = page.next_after;
  }
  const series = await api("/models/" + name + "/metrics?since=" + s.lastTime);
  for (const p of series.points) {
    if (p.time > s.lastTime || s.points.length === 0) { s.points.push(p); }
  }
  if (s.points.length) { s.lastTime = s.points[s.points.length - 1].time; }
  while (s.points.length > 5000) { s.points.shift(); }
  renderMarkers(s);
  drawChart(s);
  renderTables(s);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const info = await api("/models");
    text(document.getElementById("role"), info.role);
    const ready = document.getElementById("ready");
    text(ready, info.ready ? "consuming" : "not consuming");
    ready.className = "badge " + (info.ready ? "ok" : "bad");
    text(document.getElementById("rate"), Math.round(info.events_per_s));
    text(document.getElementById("lag"), info.lag);
    for (const model of info.models) { await refreshModel(model); }
    text(document.getElementById("updated"), new Date().toLocaleTimeString());
    text(status, "");
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (error) {
    text(status, String(error.message || error));
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
