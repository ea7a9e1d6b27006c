// transferd dashboard: plain JavaScript, no dependencies, no build step.
// The token lives in sessionStorage only; every call sends it as a bearer header,
// and live updates come from GET /api/v1/events read with fetch (EventSource
// cannot send headers, and a token must never go into a URL).
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "transferd.token";
const TERMINAL = new Set(["FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED", "EXPIRED"]);
const JOB_STATES = ["AWAITING_ACCEPTANCE", "SUBMITTED", "ACTIVE", "FINISHED", "FINISHEDDIRTY",
  "FAILED", "CANCELED", "EXPIRED"];
const FILE_STATES = ["SUBMITTED", "ACTIVE", "FINISHED", "FAILED", "CANCELED"];
const FILES_PAGE = 50;

const state = {
  token: null,
  me: null,            // {tenant, role, all_tenants}
  route: null,
  summary: null,
  live: new Map(),     // job_id -> progress from the event stream
  stream: null,        // AbortController of the event stream
  lastEventId: null,
  refreshTimer: null,
  sharesEnabled: null,
  sharesTimer: null,   // coalesces re-counts of the Shares tab badge
};

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(n >= 100 ? 0 : 1)} ${units[i]}`;
}
const rate = (bps) => (bps > 0 ? `${bytes(bps)}/s` : "–");
function duration(sec) {
  if (sec === null || sec === undefined || !isFinite(sec)) return "–";
  sec = Math.max(0, Math.round(sec));
  if (sec >= 86400) return `${Math.floor(sec / 86400)}d ${Math.floor(sec % 86400 / 3600)}h`;
  if (sec >= 3600) return `${Math.floor(sec / 3600)}h ${String(Math.floor(sec % 3600 / 60)).padStart(2, "0")}m`;
  if (sec >= 60) return `${Math.floor(sec / 60)}m ${String(sec % 60).padStart(2, "0")}s`;
  return `${sec}s`;
}
function ago(ts) {
  if (!ts) return "–";
  const d = Date.now() / 1000 - ts;
  if (d < 60) return "just now";
  if (d < 3600) return `${Math.floor(d / 60)} min ago`;
  if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
  return new Date(ts * 1000).toLocaleDateString();
}
const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "–");
const shortId = (id) => (id && id.length > 13 ? id.slice(0, 8) + "…" : id);
const num = (n) => (n ?? 0).toLocaleString();

// Secrets in URLs (user:password@, ?token=…) are never shown.
function redact(url) {
  if (!url) return url;
  return String(url)
    .replace(/\b([a-z][a-z0-9+.-]*:\/\/)[^/@\s?#]+@/gi, "$1***@")
    .replace(/([?&][a-z0-9_.-]*(?:token|sig|signature|secret|password|passwd|key|credential)[a-z0-9_.-]*=)[^&#\s]*/gi, "$1***");
}
const basename = (url) => { const p = String(url || "").split(/[?#]/)[0].split("/"); return p[p.length - 1] || url; };

function pill(st) { return h("span", { class: `pill st-${st}`, "data-state": st }, st.replace("_", " ").toLowerCase()); }

function progress(done, total, st) {
  const pct = total > 0 ? Math.min(100, (100 * done) / total) : (st === "FINISHED" ? 100 : 0);
  // size not known yet (the source will tell): a moving stripe instead of a stuck 0 %
  const unknown = !(total > 0) && st === "ACTIVE";
  const bar = h("div", { class: `bar st-${st || "ACTIVE"}${unknown ? " unknown" : ""}`, role: "progressbar",
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": pct.toFixed(0) });
  const fill = h("i");
  fill.style.width = `${pct}%`;
  bar.append(fill);
  return bar;
}

function toast(msg, bad) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

const canWrite = () => state.me && state.me.role !== "reader";

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, opts = {}) {
  const resp = await fetch(API + path, {
    method: opts.method || "GET",
    headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json",
      ...(opts.body ? { "Content-Type": "application/json" } : {}) },
    body: opts.body ? JSON.stringify(opts.body) : undefined,
    cache: "no-store",
  });
  if (resp.status === 401) { signOut("Your token was refused; sign in again."); throw new ApiError(401, "unauthorized"); }
  let body = null;
  try { body = await resp.json(); } catch { body = null; }
  if (!resp.ok) throw new ApiError(resp.status, (body && (body.detail || body.title)) || resp.statusText);
  return body;
}

// ---------------------------------------------------------------- sign-in

function showSignin(message) {
  document.getElementById("app").hidden = true;
  document.getElementById("app").replaceChildren();
  document.getElementById("tabs").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("signin").hidden = false;
  const err = document.getElementById("signin-error");
  err.hidden = !message;
  err.textContent = message || "";
  document.getElementById("token").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null; state.me = null; state.summary = null; state.live.clear();
  if (state.stream) { state.stream.abort(); state.stream = null; }
  showSignin(message);
}

async function signIn(token) {
  state.token = token;
  const resp = await fetch(`${API}/summary`, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  if (!resp.ok) {
    state.token = null;
    let detail = "";
    try { detail = (await resp.json()).detail || ""; } catch { /* not JSON */ }
    throw new ApiError(resp.status, resp.status === 401 ? "This token was refused." : detail || resp.statusText);
  }
  state.summary = await resp.json();
  state.me = { ...state.summary.principal, all_tenants: state.summary.scope === "all tenants" };
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("signin").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("tabs").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("scope").textContent =
    `${state.me.tenant} · ${state.me.role}${state.me.all_tenants ? " · all tenants" : ""}`;
  startStream();
  probeShares();
  render();
}

// ---------------------------------------------------------------- live events

function setLive(text, ok) {
  document.getElementById("live-text").textContent = text;
  document.getElementById("live").className = ok ? "live ok" : "live";
}

async function startStream() {
  if (state.stream) state.stream.abort();
  const ctrl = new AbortController();
  state.stream = ctrl;
  let delay = 1000;
  while (!ctrl.signal.aborted && state.token) {
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const resp = await fetch(`${API}/events`, { headers, signal: ctrl.signal, cache: "no-store" });
      if (resp.status === 401) { signOut("Your token was refused; sign in again."); return; }
      if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
      setLive("live", true);
      // after a gap, show what changed in it even if the stream could not replay it all
      if (state.streamBroke) scheduleRefresh(0);
      state.streamBroke = false;
      delay = 1000;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          handleSse(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    setLive("reconnecting", false);
    state.streamBroke = true;
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function handleSse(block) {
  let event = "message", data = "", id = null;
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data += (data ? "\n" : "") + value;
    else if (field === "id") id = value;
  }
  if (id) state.lastEventId = id;
  if (!data) return;
  let msg;
  try { msg = JSON.parse(data); } catch { return; }
  if (event === "progress") {
    state.live = new Map(msg.jobs.map((j) => [j.job_id, j]));
    onProgress();
  } else if (event === "job" || event === "file") {
    if (event === "job") scheduleSharesProbe();
    onChange(msg);
  }
}

// ---------------------------------------------------------------- routing

function parseRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) return { name: "job", id: decodeURIComponent(parts[1]), params };
  if (parts[0] === "jobs") return { name: "jobs", params };
  if (parts[0] === "shares") return { name: "shares", params };
  return { name: "overview", params };
}

function render() {
  if (!state.token) return;
  state.route = parseRoute();
  for (const a of document.querySelectorAll("#tabs a")) {
    const tab = state.route.name === "job" ? "jobs" : state.route.name;
    a.classList.toggle("active", a.dataset.tab === tab);
  }
  const app = document.getElementById("app");
  const views = { overview: viewOverview, jobs: viewJobs, job: viewJob, shares: viewShares };
  app.replaceChildren();
  views[state.route.name](app);
}

// Refreshes triggered by events are coalesced so a burst of 1,000 file events costs one fetch.
function scheduleRefresh(delayMs = 600) {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(async () => {
    state.refreshTimer = null;
    const view = state.current;
    if (view && view.refresh) {
      try { await view.refresh(); } catch (e) { if (e.status !== 401) console.warn(e); }
    }
  }, delayMs);
}

function onChange(msg) {
  const view = state.current;
  if (!view) return;
  if (view.jobId && msg.job_id !== view.jobId) return;
  scheduleRefresh(view.jobId ? 250 : 1000);
}

function onProgress() {
  const view = state.current;
  if (view && view.progress) view.progress();
}

// ---------------------------------------------------------------- overview

function tile(label, value, sub, cls) {
  return h("div", { class: `tile ${cls || ""}` },
    h("div", { class: "tile-label" }, label),
    h("div", { class: "tile-value", "data-tile": cls }, value),
    h("div", { class: "tile-sub" }, sub || ""));
}

function viewOverview(app) {
  const root = h("div", { class: "overview" });
  app.append(root);
  let lastRefresh = Date.now();
  const view = {
    refresh: async () => { lastRefresh = Date.now(); state.summary = await api("/summary"); draw(); },
    progress: () => {
      drawActiveFromLive();
      // file rows and queues come with the summary: follow them every few seconds while busy
      if (state.live.size && Date.now() - lastRefresh > 3000) scheduleRefresh(0);
    },
  };
  state.current = view;

  let activeBody = null;
  function drawActiveFromLive() {
    // job-level bars move every second from the stream; file rows follow on refresh
    for (const row of root.querySelectorAll("[data-live-job]")) {
      const j = state.live.get(row.dataset.liveJob);
      if (!j) continue;
      row.querySelector(".bar").replaceWith(progress(j.bytes_done, j.bytes_total, j.state));
      row.querySelector(".job-bytes").textContent =
        `${bytes(j.bytes_done)} of ${bytes(j.bytes_total)} · ${num(j.files_by_state.FINISHED)}/${num(j.files)} files`;
      row.querySelector(".rate").textContent = rate(j.rate_bps);
      row.querySelector(".eta").textContent = duration(j.eta_s);
    }
    const rateNow = [...state.live.values()].reduce((a, j) => a + (j.state === "ACTIVE" ? j.rate_bps : 0), 0);
    const t = root.querySelector('[data-tile="rate"]');
    if (t) t.textContent = rate(rateNow);
  }

  function draw() {
    const sum = state.summary;
    const t = sum.tiles;
    root.replaceChildren(
      h("div", { class: "tiles" },
        tile("Queued", num(t.queued), "files waiting", "queued"),
        tile("Active", num(t.active), `files in ${num(t.jobs_live)} live jobs`, "active"),
        tile("Finished · 24 h", num(t.finished_24h), "files", "finished"),
        tile("Failed · 24 h", num(t.failed_24h), "files, after retries", "failed"),
        tile("Throughput", rate(t.rate_bps), "now", "rate")),
      h("div", { class: "grid two" },
        card("Throughput · last hour", chart(sum.throughput), "chart-card"),
        card("Failures · 24 h", failures(sum.failures))),
      card("Active transfers", activeTable(sum), "wide"),
      sum.links ? h("div", { class: "grid two" },
        card("Queues per link", linksTable(sum.links)),
        card("Queues per backend", backendsTable(sum.backends))) :
        h("p", { class: "muted note" }, "Queues per link and backend are shown to operators."),
    );
    drawActiveFromLive();
  }

  function activeTable(sum) {
    const jobs = sum.live_jobs.filter((j) => j.state === "ACTIVE" || j.state === "SUBMITTED");
    if (!jobs.length && !sum.active_files.length) return empty("Nothing is moving right now.");
    const rows = [];
    for (const j of jobs.slice(0, 12)) {
      const files = sum.active_files.filter((f) => f.job_id === j.job_id);
      rows.push(h("tr", { class: "job-row", "data-live-job": j.job_id },
        h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(j.job_id)}`, class: "mono" }, shortId(j.job_id)),
          state.me.all_tenants ? h("span", { class: "muted small" }, ` ${j.owner}`) : null),
        h("td", {}, pill(j.state)),
        h("td", { class: "grow" }, progress(j.bytes_done, j.bytes_total, j.state),
          h("div", { class: "small muted job-bytes" }, `${bytes(j.bytes_done)} of ${bytes(j.bytes_total)} · ${num(j.files_by_state.FINISHED)}/${num(j.files)} files`)),
        h("td", { class: "rate num" }, rate(j.rate_bps)),
        h("td", { class: "eta num hide-sm" }, duration(j.eta_s))));
      for (const f of files.slice(0, 6)) {
        rows.push(h("tr", { class: "file-row" },
          h("td", { class: "small", colspan: "2", title: f.source }, "↳ ", basename(f.destination)),
          h("td", { class: "grow" }, progress(f.bytes_done, f.size, "ACTIVE"),
            h("div", { class: "small muted" }, `${bytes(f.bytes_done)} of ${bytes(f.size)} · ${f.link}`)),
          h("td", { class: "num small" }, rate(f.rate_bps)),
          h("td", { class: "num small hide-sm" }, duration(f.eta_s))));
      }
    }
    return h("table", { class: "table active-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "State"), h("th", {}, "Progress"),
        h("th", { class: "num" }, "Rate"), h("th", { class: "num hide-sm" }, "ETA"))),
      h("tbody", {}, rows));
  }

  draw();
  return view;
}

function card(title, body, cls) {
  return h("section", { class: `card ${cls || ""}` }, h("h2", {}, title), body);
}
const empty = (msg) => h("p", { class: "empty" }, msg);

function chart(points) {
  const W = 720, H = 220, L = 64, R = 12, T = 12, B = 28;
  const max = Math.max(...points.map((p) => p.bps), 0);
  const nice = niceMax(Math.max(max, 1024 * 1024));
  const x = (i) => L + (i * (W - L - R)) / Math.max(1, points.length - 1);
  const y = (v) => T + (H - T - B) * (1 - v / nice);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "aria-label": "Throughput over the last hour" });
  const defs = s("defs", {}, s("linearGradient", { id: "tp-fill", x1: "0", y1: "0", x2: "0", y2: "1" },
    s("stop", { offset: "0%", "stop-color": "#2563eb", "stop-opacity": "0.35" }),
    s("stop", { offset: "100%", "stop-color": "#2563eb", "stop-opacity": "0.02" })));
  svg.append(defs);
  for (let k = 0; k <= 4; k++) {
    const v = (nice * k) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid-line" }));
    svg.append(s("text", { x: L - 8, y: y(v) + 4, class: "axis", "text-anchor": "end" }, k ? rate(v) : "0"));
  }
  points.forEach((p, i) => {
    if (i % 10 === 0 || i === points.length - 1) {
      const d = new Date(p.t * 1000);
      const anchor = i === points.length - 1 ? "end" : i === 0 ? "start" : "middle";
      svg.append(s("text", { x: x(i), y: H - 8, class: "axis", "text-anchor": anchor },
        `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`));
    }
  });
  if (points.length) {
    const line = points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p.bps).toFixed(1)}`).join(" ");
    svg.append(s("path", { d: `${line} L${x(points.length - 1)},${y(0)} L${x(0)},${y(0)} Z`, fill: "url(#tp-fill)" }));
    svg.append(s("path", { d: line, class: "series" }));
    const last = points[points.length - 1];
    svg.append(s("circle", { cx: x(points.length - 1), cy: y(last.bps), r: 3.5, class: "dot" }));
  }
  if (max === 0) {
    svg.append(s("text", { x: (L + W - R) / 2, y: (T + H - B) / 2, class: "chart-empty", "text-anchor": "middle" },
      "No data moved in the last hour"));
  }
  const peak = Math.max(0, ...points.map((p) => p.bps));
  const avg = points.length ? points.reduce((a, p) => a + p.bps, 0) / points.length : 0;
  return h("div", {}, svg, h("div", { class: "chart-legend small muted" },
    `per-minute average · peak ${rate(peak)} · mean ${rate(avg)}`));
}

function niceMax(v) {
  const p = Math.pow(1024, Math.floor(Math.log(v) / Math.log(1024)));
  const m = v / p;
  const step = [1, 2, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100, 128, 200, 256, 500, 512, 1000, 1024].find((c) => c >= m) || 1024;
  return step * p;
}

function sparkline(values) {
  const W = 96, H = 24, max = Math.max(1, ...values);
  const pts = values.map((v, i) => `${((i * W) / Math.max(1, values.length - 1)).toFixed(1)},${(H - 2 - ((H - 4) * v) / max).toFixed(1)}`);
  return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "spark", "aria-hidden": "true" },
    s("polyline", { points: pts.join(" ") }));
}

function failures(groups) {
  if (!groups.length) return empty("No failed files in the last 24 hours.");
  const total = groups.reduce((a, g) => a + g.count, 0);
  return h("ul", { class: "failures" }, groups.slice(0, 8).map((g) => {
    const first = g.jobs[0];
    const href = `#/jobs/${encodeURIComponent(first.job_id)}?state=FAILED`;
    return h("li", {},
      h("div", { class: "fail-head" },
        h("span", { class: "tag" }, g.error_class),
        h("a", { href, class: "fail-count", title: "Show these files" }, `${num(g.count)} file${g.count === 1 ? "" : "s"}`)),
      h("div", { class: "fail-reason", title: g.reason }, g.reason || "no reason given"),
      h("div", { class: "fail-bar" }, (() => { const i = h("i"); i.style.width = `${(100 * g.count) / total}%`; return i; })()),
      g.jobs.length > 1 ? h("div", { class: "small muted" }, "in ",
        g.jobs.slice(0, 4).map((j, k) => [k ? ", " : "", h("a", { href: `#/jobs/${encodeURIComponent(j.job_id)}?state=FAILED`, class: "mono" }, `${shortId(j.job_id)} (${j.count})`)]),
        g.jobs.length > 4 ? ` and ${g.jobs.length - 4} more jobs` : "") : null);
  }));
}

function linksTable(links) {
  if (!links.length) return empty("No queued or running files on any link.");
  return h("table", { class: "table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Link"), h("th", { class: "num" }, "Queued"),
      h("th", { class: "num" }, "Active / target"), h("th", { class: "num" }, "Rate"),
      h("th", { class: "num" }, "Success 1 h"), h("th", {}, "Last hour"))),
    h("tbody", {}, links.map((l) => h("tr", {},
      h("td", { class: "mono small" }, l.link),
      h("td", { class: "num" }, num(l.queued)),
      h("td", { class: "num" }, `${l.active}${l.dispatched ? ` (+${l.dispatched})` : ""} / ${l.target}`),
      h("td", { class: "num" }, rate(l.rate_bps)),
      h("td", { class: "num" }, l.success_rate === null ? "–" : `${(100 * l.success_rate).toFixed(l.success_rate === 1 ? 0 : 1)}%`),
      h("td", {}, sparkline(l.history_bps))))));
}

function backendsTable(backends) {
  if (!backends.length) return empty("No backend has work.");
  return h("table", { class: "table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Backend"), h("th", { class: "num" }, "Queued"),
      h("th", { class: "num" }, "Dispatched"), h("th", { class: "num" }, "Active"), h("th", { class: "num" }, "Rate"))),
    h("tbody", {}, backends.map((b) => h("tr", {},
      h("td", {}, h("span", { class: "tag" }, b.backend)),
      h("td", { class: "num" }, num(b.queued)), h("td", { class: "num" }, num(b.dispatched)),
      h("td", { class: "num" }, num(b.active)), h("td", { class: "num" }, rate(b.rate_bps))))));
}

// ---------------------------------------------------------------- jobs list

function viewJobs(app) {
  const params = state.route.params;
  const filters = { q: params.get("q") || "", state: params.get("state") || "", owner: params.get("owner") || "" };
  let jobs = [], next = null;
  const list = h("div", { class: "job-list" });
  const more = h("button", { type: "button", class: "ghost", hidden: true, onclick: () => load(true) }, "Load more");
  const search = h("input", { type: "search", placeholder: "Search id, owner, submitter, activity…", value: filters.q, "aria-label": "Search jobs",
    oninput: (e) => { filters.q = e.target.value; draw(); } });
  const stateSel = h("select", { "aria-label": "Job state", onchange: (e) => { filters.state = e.target.value; load(false); } },
    h("option", { value: "" }, "Any state"), JOB_STATES.map((st) => h("option", { value: st, selected: st === filters.state }, st)));
  const owner = state.me.all_tenants ? h("input", { type: "text", placeholder: "Tenant", value: filters.owner, "aria-label": "Tenant",
    onchange: (e) => { filters.owner = e.target.value.trim(); load(false); } }) : null;
  app.append(card("Jobs", h("div", {}, h("div", { class: "filters" }, search, stateSel, owner), list, h("div", { class: "center" }, more)), "wide"));

  async function load(append) {
    const q = new URLSearchParams({ limit: "100" });
    if (filters.state) q.set("state", filters.state);
    if (filters.owner) q.set("owner", filters.owner);
    if (append && next) q.set("cursor", next);
    try {
      const page = await api(`/jobs?${q}`);
      jobs = append ? jobs.concat(page.jobs) : page.jobs;
      next = page.next_cursor;
    } catch (e) { if (e.status !== 401) toast(e.message, true); return; }
    draw();
  }

  function draw() {
    const needle = filters.q.trim().toLowerCase();
    const shown = jobs.filter((j) => !needle || [j.job_id, j.owner, j.submitter, j.params.activity]
      .some((v) => String(v || "").toLowerCase().includes(needle)));
    more.hidden = !next;
    if (!shown.length) { list.replaceChildren(empty(jobs.length ? "No job matches the search." : "No jobs yet.")); return; }
    list.replaceChildren(h("table", { class: "table jobs-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "State"), state.me.all_tenants ? h("th", {}, "Tenant") : null,
        h("th", {}, "Progress"), h("th", { class: "num" }, "Files"), h("th", { class: "num" }, "Rate"), h("th", {}, "Created"))),
      h("tbody", {}, shown.map((j) => {
        const live = TERMINAL.has(j.state) ? null : state.live.get(j.job_id);
        const t = live ? { ...j.totals, ...live, files_by_state: live.files_by_state } : j.totals;
        const st = live ? live.state : j.state;
        return h("tr", { class: "clickable", "data-job": j.job_id, onclick: () => { location.hash = `#/jobs/${encodeURIComponent(j.job_id)}`; } },
          h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(j.job_id)}`, class: "mono" }, shortId(j.job_id)),
            j.params.activity && j.params.activity !== "default" ? h("span", { class: "muted small" }, ` ${j.params.activity}`) : null),
          h("td", {}, pill(st)),
          state.me.all_tenants ? h("td", {}, j.owner) : null,
          h("td", { class: "grow" }, progress(t.bytes_done, t.bytes_total, st),
            h("div", { class: "small muted" }, `${bytes(t.bytes_done)} of ${bytes(t.bytes_total)}`)),
          h("td", { class: "num" }, `${num(t.files_by_state.FINISHED)}/${num(t.files)}`,
            t.files_by_state.FAILED ? h("span", { class: "bad small" }, ` ${t.files_by_state.FAILED} failed`) : null),
          h("td", { class: "num" }, rate(t.rate_bps)),
          h("td", { class: "small", title: when(j.created_at) }, ago(j.created_at)));
      }))));
  }

  state.current = { refresh: () => load(false), progress: draw };
  load(false);
}

// ---------------------------------------------------------------- job detail

function viewJob(app) {
  const jobId = state.route.id;
  const fileState = state.route.params.get("state") || "";
  let job = null;
  const cursors = [null];   // cursor of each page seen, for Previous
  let page = 0, nextCursor = null, lastFiles = 0;
  const head = h("div", { class: "job-head" });
  const files = h("div", {});
  const pager = h("div", { class: "pager" });
  const stateSel = h("select", { "aria-label": "File state", onchange: (e) => {
    const q = e.target.value ? `?state=${e.target.value}` : "";
    location.hash = `#/jobs/${encodeURIComponent(jobId)}${q}`;
  } }, h("option", { value: "" }, "All files"), FILE_STATES.map((st) => h("option", { value: st, selected: st === fileState }, st)));
  app.append(h("a", { href: "#/jobs", class: "back" }, "← Jobs"), head,
    card("Files", h("div", {}, h("div", { class: "filters" }, stateSel), files, pager), "wide"));

  async function loadJob() {
    try { job = await api(`/jobs/${encodeURIComponent(jobId)}`); } catch (e) {
      if (e.status === 404) head.replaceChildren(card("No such job", empty("This job does not exist or belongs to another tenant.")));
      else if (e.status !== 401) toast(e.message, true);
      return false;
    }
    drawHead();
    return true;
  }

  async function loadFiles() {
    const q = new URLSearchParams({ limit: String(FILES_PAGE) });
    if (fileState) q.set("state", fileState);
    if (cursors[page]) q.set("cursor", cursors[page]);
    let body;
    try { body = await api(`/jobs/${encodeURIComponent(jobId)}/files?${q}`); } catch (e) { return; }
    nextCursor = body.next_cursor;
    drawFiles(body.files);
  }

  async function act(kind) {
    const label = kind === "cancel" ? "Cancel" : "Retry";
    if (kind === "cancel" && !confirm(`Cancel job ${jobId}? Running copies stop and queued files will not start.`)) return;
    try {
      if (kind === "cancel") job = await api(`/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
      else { const r = await api(`/jobs/${encodeURIComponent(jobId)}/retry`, { method: "POST" }); toast(`${r.retried} file${r.retried === 1 ? "" : "s"} queued again`); }
    } catch (e) { if (e.status !== 401) toast(`${label} failed: ${e.message}`, true); return; }
    await loadJob();
    await loadFiles();
  }

  function drawHead() {
    // a fetched terminal state wins over a progress tick sent just before the end
    const live = TERMINAL.has(job.state) ? null : state.live.get(jobId);
    const t = live ? { ...job.totals, ...live } : job.totals;
    const st = live ? live.state : job.state;
    const byState = live ? live.files_by_state : job.totals.files_by_state;
    const actions = [];
    if (canWrite() && !TERMINAL.has(st)) actions.push(h("button", { type: "button", class: "danger", id: "cancel-job", onclick: () => act("cancel") }, "Cancel job"));
    if (canWrite() && (byState.FAILED || byState.CANCELED)) actions.push(h("button", { type: "button", class: "primary", id: "retry-job", onclick: () => act("retry") }, `Retry ${num((byState.FAILED || 0) + (byState.CANCELED || 0))} files`));
    head.replaceChildren(h("section", { class: "card job-card" },
      h("div", { class: "job-title" },
        h("div", {}, h("h1", { class: "mono" }, jobId), h("div", { class: "muted small" },
          `owner ${job.owner} · submitted by ${job.submitter} · ${when(job.created_at)}`)),
        h("div", { class: "job-state", id: "job-state" }, pill(st)),
        h("div", { class: "actions" }, actions)),
      h("div", { id: "job-progress" }, progress(t.bytes_done, t.bytes_total, st)),
      h("div", { class: "job-stats" },
        stat("Bytes", `${bytes(t.bytes_done)} / ${bytes(t.bytes_total)}`),
        stat("Rate", rate(t.rate_bps)), stat("ETA", TERMINAL.has(st) ? "–" : duration(t.eta_s)),
        FILE_STATES.map((fs) => stat(fs.toLowerCase(), num(byState[fs] || 0), `fs-${fs}`)),
        stat("Backend", job.params.backend), stat("Priority", job.params.priority),
        stat("Verify", job.params.verify_checksum),
        job.finished_at ? stat("Finished", when(job.finished_at)) : null)));
  }

  function stat(label, value, cls) {
    return h("div", { class: `stat ${cls || ""}` }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value));
  }

  function drawFiles(rows) {
    if (!rows.length) files.replaceChildren(empty(fileState ? `No ${fileState.toLowerCase()} files.` : "No files."));
    else files.replaceChildren(h("div", { class: "scroll" }, h("table", { class: "table files-table" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "State"), h("th", {}, "Source → destination"),
        h("th", {}, "Progress"), h("th", { class: "num" }, "Tries"), h("th", {}, "Checksum / error"))),
      h("tbody", {}, rows.map((f) => h("tr", { "data-file": f.file_id },
        h("td", { class: "num muted" }, f.index),
        h("td", {}, pill(f.state)),
        h("td", { class: "paths" }, h("div", { class: "mono small", title: redact(f.source) }, redact(f.source)),
          h("div", { class: "mono small muted", title: redact(f.destination) }, "→ ", redact(f.destination))),
        h("td", { class: "prog" }, progress(f.state === "FINISHED" ? (f.size ?? f.bytes_done) : f.bytes_done, f.size, f.state),
          h("div", { class: "small muted" }, `${bytes(f.state === "FINISHED" ? (f.size ?? f.bytes_done) : f.bytes_done)} of ${bytes(f.size)}${f.state === "ACTIVE" ? ` · ${rate(f.rate_bps)}` : ""}`)),
        h("td", { class: "num" }, f.attempts),
        h("td", { class: "small" }, f.error_class ? [h("span", { class: "tag bad" }, f.error_class), " ", redact(f.reason || "")]
          : h("span", { class: "mono muted" }, f.verified_checksum || f.checksum || "–"))))))));
    pager.replaceChildren(
      h("button", { type: "button", class: "ghost", disabled: page === 0, onclick: () => { page--; loadFiles(); } }, "← Previous"),
      h("span", { class: "muted small" }, `page ${page + 1} · ${FILES_PAGE} per page`),
      h("button", { type: "button", class: "ghost", disabled: !nextCursor, onclick: () => { cursors[page + 1] = nextCursor; page++; loadFiles(); } }, "Next →"));
  }

  state.current = {
    jobId,
    refresh: async () => { if (await loadJob()) await loadFiles(); },
    progress: () => {
      if (!job) return;
      if (!state.live.has(jobId)) {
        // it left the live set: fetch its final state once
        if (!TERMINAL.has(job.state)) scheduleRefresh(0);
        return;
      }
      drawHead();
      if (Date.now() - lastFiles > 2000) { lastFiles = Date.now(); loadFiles(); }
    },
  };
  state.current.refresh();
}

// ---------------------------------------------------------------- OCM shares

async function probeShares() {
  try {
    const body = await api("/shares?state=pending");
    state.sharesEnabled = true;
    const n = (body.shares || []).length;
    const badge = document.getElementById("shares-count");
    badge.hidden = n === 0;
    badge.textContent = String(n);
  } catch (e) {
    state.sharesEnabled = e.status === 404 ? false : state.sharesEnabled;
  }
}

// A share arriving, accepted or declined changes its job's state: re-count the badge then,
// so it is right on every tab, not only after a visit to Shares.
function scheduleSharesProbe() {
  if (state.sharesEnabled === false || state.sharesTimer) return;
  state.sharesTimer = setTimeout(() => {
    state.sharesTimer = null;
    if (state.token) probeShares();
  }, 1000);
}

function viewShares(app) {
  const body = h("div", {}, empty("Loading…"));
  app.append(card("Incoming shares awaiting acceptance", body, "wide"));
  async function load() {
    let data;
    try { data = await api("/shares?state=pending"); } catch (e) {
      if (e.status === 404) { state.sharesEnabled = false; body.replaceChildren(empty("OCM not enabled on this node.")); }
      else if (e.status !== 401) body.replaceChildren(empty(`Shares cannot be listed: ${e.message}`));
      return;
    }
    state.sharesEnabled = true;
    const shares = data.shares || [];
    const badge = document.getElementById("shares-count");
    badge.hidden = shares.length === 0;
    badge.textContent = String(shares.length);
    if (!shares.length) { body.replaceChildren(empty("No share is waiting for you. New ones appear here as sites share folders with this node.")); return; }
    body.replaceChildren(h("ul", { class: "shares" }, shares.map((sh) => h("li", { class: "share", "data-share": sh.id },
      h("div", { class: "share-icon", "aria-hidden": "true" }, "⇣"),
      h("div", { class: "share-main" },
        h("div", { class: "share-name" }, sh.name),
        h("div", { class: "small muted" }, `from ${sh.sender || sh.owner} · ${sh.provider} · ${bytes(sh.size)} · ${ago(sh.created_at)}`)),
      canWrite() ? h("div", { class: "actions" },
        h("button", { type: "button", class: "ghost", onclick: () => decide(sh, "decline") }, "Decline"),
        h("button", { type: "button", class: "primary", onclick: () => decide(sh, "accept") }, "Accept")) : null))));
  }
  async function decide(share, what) {
    try {
      const out = await api(`/shares/${encodeURIComponent(share.id)}/${what}`, { method: "POST" });
      toast(what === "accept" ? `Accepted “${share.name}”; the transfer starts now` : `Declined “${share.name}”`);
      if (what === "accept" && out && out.job_id) { location.hash = `#/jobs/${encodeURIComponent(out.job_id)}`; return; }
    } catch (e) { if (e.status !== 401) toast(`${what} failed: ${e.message}`, true); }
    load();
  }
  state.current = { refresh: load };
  load();
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = document.getElementById("token");
    const token = input.value.trim();
    const button = document.getElementById("signin-button");
    button.disabled = true;
    try {
      await signIn(token);
      input.value = "";
    } catch (err) {
      showSignin(err.status === 401 ? "This token was refused." : `Cannot sign in: ${err.message}`);
    } finally { button.disabled = false; }
  });
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", render);
  // the throughput chart and the 24 h tiles move even when no event arrives
  setInterval(() => { if (state.token && state.route && state.route.name === "overview") scheduleRefresh(0); }, 15000);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved).catch(() => signOut("Your saved token was refused; sign in again."));
  else showSignin();
});
