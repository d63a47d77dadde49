// firstclick's page: plain JS over the service's JSON routes (no build step).
"use strict";

const state = {
  events: [],            // {type, item_id?, query?, item?, title}
  userId: localStorage.getItem("fc-user") || "web-" + Math.random().toString(36).slice(2, 10),
  apiKey: localStorage.getItem("fc-key") || "",
  reportsLoaded: false,
  requestNo: 0,
};
localStorage.setItem("fc-user", state.userId);

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
};

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.apiKey) headers["X-API-Key"] = state.apiKey;
  const response = await fetch(path, {method, headers,
                                      body: body === undefined ? undefined : JSON.stringify(body)});
  if (response.status === 401) { $("keybar").hidden = false; throw new Error("API key needed"); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ")
                                              : data.detail || response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}

// ---- catalogue --------------------------------------------------------------------------------
function itemMeta(item) {
  return [item.category, item.brand].filter(Boolean).join(" · ");
}

function segmentBadge(segment) {
  return el("span", `badge seg-${segment}`, segment.replace("_", " "));
}

async function runSearch() {
  const q = $("search").value.trim();
  $("search-hint").textContent = q ? `Matches for “${q}”` :
    "Popular now — click a product to add it to the session";
  try {
    const data = await api("POST", "/catalogue/search", {q, limit: 25});
    const list = $("results");
    list.replaceChildren();
    if (!data.items.length) list.append(el("li", "empty", "No product matches every word."));
    for (const item of data.items) {
      const li = el("li", "result");
      li.dataset.testid = "result-item";
      li.dataset.itemId = item.item_id;
      const main = el("div", "result-main");
      main.append(el("div", "title", item.title), el("div", "meta", itemMeta(item)));
      const side = el("div", "result-side");
      side.append(segmentBadge(item.segment));
      if (item.recent) side.append(el("span", "badge hot", `${item.recent} today`));
      li.append(main, side);
      li.title = "Add a click on this product to the session";
      li.addEventListener("click", () => addItemEvent(item.item_id, item.title));
      list.append(li);
    }
  } catch (err) {
    $("results").replaceChildren(el("li", "error", String(err.message || err)));
  }
}

// ---- session ----------------------------------------------------------------------------------
function addItemEvent(itemId, title, type = "click") {
  state.events.push({type, item_id: itemId, title});
  logEvent({event: type, item_id: itemId});
  sessionChanged();
}

function renderSession() {
  const list = $("events");
  list.replaceChildren();
  state.events.forEach((event, n) => {
    const li = el("li", "event");
    li.dataset.testid = "session-event";
    const type = el("span", `etype t-${event.type}`, event.type);
    const label = event.type === "search" ? `“${event.query}”`
      : event.title || (event.item && event.item.title) || event.item_id;
    const remove = el("button", "x", "×");
    remove.title = "Remove this event";
    remove.addEventListener("click", () => { state.events.splice(n, 1); sessionChanged(); });
    li.append(type, el("span", "elabel", label), remove);
    list.append(li);
  });
  $("events-empty").hidden = state.events.length > 0;
}

function sessionPayload() {
  return {
    user_id: state.userId,
    k: Number($("k").value),
    events: state.events.map((e) => e.type === "search" ? {type: "search", query: e.query}
      : e.item ? {type: e.type, item: e.item} : {type: e.type, item_id: e.item_id}),
  };
}

async function logEvent(event) {
  if (!$("log-events").checked) return;
  try {
    const data = await api("POST", "/events", {...event, user_id: state.userId});
    $("event-note").textContent = `logged (seq ${data.last_seq}); popularity counts updated`;
  } catch (err) {
    $("event-note").textContent = `event not logged: ${err.message}`;
  }
}

function sessionChanged() {
  renderSession();
  recommend();
}

async function loadExample(name) {
  const found = state.examples.find((x) => x.name === name);
  if (!found) return;
  const events = found.session.events || [];
  const ids = events.filter((e) => e.item_id).map((e) => e.item_id);
  let titles = {};
  if (ids.length) {
    try {
      const data = await api("POST", "/catalogue/search", {ids, limit: 50});
      titles = Object.fromEntries(data.items.map((i) => [i.item_id, i.title]));
    } catch (err) { /* titles are cosmetic */ }
  }
  state.events = events.map((e) => ({...e, title: titles[e.item_id] || (e.item && e.item.title)}));
  sessionChanged();
}

// ---- recommendations --------------------------------------------------------------------------
function fmt(x, digits = 3) {
  return x === null || x === undefined ? "—" : Number(x).toFixed(digits);
}

function renderTimings(t) {
  const box = $("timings");
  box.replaceChildren();
  // every stage the engine reports (encode, search, rank, rerank, ...), in its order
  const stages = Object.keys(t).filter((k) => k !== "total" && k !== "batch_size");
  const total = Math.max(t.total, 0.001);
  const bar = el("div", "bar");
  for (const stage of stages) {
    const part = el("span", `seg s-${stage}`);
    part.style.width = `${Math.max(0.5, (100 * t[stage]) / total)}%`;
    part.title = `${stage} ${fmt(t[stage], 1)} ms`;
    bar.append(part);
  }
  const legend = el("div", "legend");
  for (const stage of stages) {
    const key = el("span", "key");
    key.append(el("i", `dot s-${stage}`), `${stage} ${fmt(t[stage], 1)} ms`);
    legend.append(key);
  }
  legend.append(el("span", "key total", `total ${fmt(t.total, 1)} ms`));
  box.append(bar, legend);
}

function renderResult(result) {
  const summary = $("summary");
  summary.replaceChildren();
  const seg = el("span", `chip user-${result.segment}`, result.segment.replace("_", " "));
  seg.dataset.testid = "segment";
  const reranked = el("span", `chip ${result.reranked ? "on" : "off"}`,
                      result.reranked ? "reranked" : "not reranked");
  reranked.dataset.testid = "reranked";
  summary.append(seg, reranked);
  if (result.fallback) summary.append(el("span", "chip warn", result.fallback));
  for (const warning of result.warnings || []) summary.append(el("div", "warning", warning));
  renderTimings(result.timings_ms);
  const list = $("rec-list");
  list.replaceChildren();
  for (const item of result.items) {
    const li = el("li", "card");
    li.dataset.testid = "rec-item";
    li.dataset.itemId = item.item_id;
    const head = el("div", "card-head");
    head.append(el("span", "rank", item.rank), el("span", "title", item.title),
                segmentBadge(item.item_segment));
    const scores = el("div", "scores");
    scores.append(el("span", "", `score ${fmt(item.score)}`),
                  el("span", "", `retrieval ${fmt(item.retrieval_score)}`),
                  el("span", "", `rerank ${fmt(item.rerank_score)}`));
    if (item.sources && item.sources.length) {
      const found = el("span", "sources");
      found.title = "candidate sources that proposed this item (the deciding one first)";
      const ordered = [item.signal, ...item.sources.filter((x) => x !== item.signal)]
        .filter(Boolean);
      for (const source of ordered) found.append(el("span", "src", source.replace("_", "-")));
      scores.append(found);
    }
    scores.append(el("span", "id", item.item_id));
    const because = el("div", "because", item.because ? `because ${item.because}` : "");
    because.dataset.testid = "because";
    li.append(head, scores, because);
    li.title = "Click to add this product to the session";
    li.addEventListener("click", () => addItemEvent(item.item_id, item.title));
    list.append(li);
  }
}

async function recommend() {
  const ticket = ++state.requestNo;
  const rerank = $("rerank").checked ? "true" : "false";
  try {
    const result = await api("POST", `/recommend?rerank=${rerank}`, sessionPayload());
    if (ticket === state.requestNo) renderResult(result);   // drop out-of-order answers
  } catch (err) {
    $("summary").replaceChildren(el("div", "error", String(err.message || err)));
  }
}

// ---- benchmarks -------------------------------------------------------------------------------
async function loadReports() {
  if (state.reportsLoaded) return;
  const data = await api("GET", "/ui/reports");
  state.reportsLoaded = true;
  const tabs = $("report-tabs");
  tabs.replaceChildren();
  if (!data.reports.length) {
    $("report").replaceChildren(el("p", "empty", "No benchmark reports in benchmarks/results/."));
    return;
  }
  data.reports.forEach((report, n) => {
    const button = el("button", "tab", report.name.replaceAll("_", " "));
    button.addEventListener("click", () => {
      tabs.querySelectorAll(".tab").forEach((b) => b.classList.remove("active"));
      button.classList.add("active");
      $("report").innerHTML = report.html;   // rendered by the server from our own .md files
    });
    tabs.append(button);
    if (n === 0) button.click();
  });
}

function showView(view) {
  document.querySelectorAll(".tabs .tab").forEach((b) =>
    b.classList.toggle("active", b.dataset.view === view));
  $("view-try").hidden = view !== "try";
  $("view-bench").hidden = view !== "bench";
  if (view === "bench") loadReports().catch((err) =>
    $("report").replaceChildren(el("p", "error", String(err.message || err))));
}

// ---- start ------------------------------------------------------------------------------------
async function start() {
  document.querySelectorAll(".tabs .tab").forEach((b) =>
    b.addEventListener("click", () => showView(b.dataset.view)));
  let timer = null;
  $("search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(runSearch, 150); });
  $("clear").addEventListener("click", () => { state.events = []; sessionChanged(); });
  $("rerank").addEventListener("change", recommend);
  $("k").addEventListener("change", recommend);
  $("examples").addEventListener("change", (e) => loadExample(e.target.value));
  $("search-event").addEventListener("submit", (e) => {
    e.preventDefault();
    const query = $("search-event-text").value.trim();
    if (!query) return;
    state.events.push({type: "search", query});
    logEvent({event: "search", query});
    $("search-event-text").value = "";
    sessionChanged();
  });
  $("keybar").addEventListener("submit", (e) => {
    e.preventDefault();
    state.apiKey = $("api-key").value.trim();
    localStorage.setItem("fc-key", state.apiKey);
    location.reload();   // start over with the key
  });
  try {
    const health = await (await fetch("/healthz")).json();
    $("health").textContent = health.loaded
      ? `run ${health.run} · ${health.items.toLocaleString()} items · reranker ${health.reranker ? "on" : "off"}`
      : "loading…";
    if (!health.reranker) { $("rerank").checked = false; $("rerank").disabled = true; }
  } catch (err) { $("health").textContent = "service unreachable"; }
  try {
    state.examples = (await api("GET", "/ui/examples")).examples;
    for (const example of state.examples) {
      const option = el("option", "", example.name.replaceAll("_", " "));
      option.value = example.name;
      $("examples").append(option);
    }
  } catch (err) { state.examples = []; }
  renderSession();
  await Promise.all([runSearch(), recommend()]);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
