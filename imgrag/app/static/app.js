// imgrag search page. Every state lives in the URL (q, upload, similar, detail and the
// filters), so a search can be shared, bookmarked or gone back to. Text from the store is
// only ever set with textContent: keys holding HTML or quotes show as text.
"use strict";

const FILTERS = ["prefix", "bucket", "min_width", "modified_after", "max_distance", "k"];
const MODES = ["q", "upload", "similar"];
const $ = (id) => document.getElementById(id);
let config = { token: false, summaries: false };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

// Control characters as their visible symbols (U+2400…), so none can hide or mislead.
function visible(text) {
  return String(text).replace(/[\u0000-\u001f\u007f]/g,
    (c) => String.fromCharCode(c === "\u007f" ? 0x2421 : 0x2400 + c.charCodeAt(0)));
}

function shorten(text, max = 28) {
  text = visible(text);
  if (text.length <= max) return text;
  const tail = Math.ceil(max * 0.62);
  return text.slice(0, max - tail - 1) + "…" + text.slice(-tail);
}

function state() { return new URLSearchParams(location.search); }

function filterParams(from) {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = from.get(name);
    if (value) params.set(name, value);
  }
  return params;
}

function go(params, replace = false) {
  const url = params.toString() ? "?" + params : location.pathname;
  history[replace ? "replaceState" : "pushState"](null, "", url);
  render();
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401) showLogin();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function recordUrl(kind, id) { return `/api/${kind}/${encodeURIComponent(id)}`; }

function card(hit) {
  const meta = hit.metadata || {};
  const name = meta.bucket ? `${meta.bucket}/${meta.key}` : meta.key || hit.id;
  const img = el("img", { src: hit.thumbnail_url, alt: visible(`#${hit.rank} ${name}`), loading: "lazy" });
  img.addEventListener("error", () => img.replaceWith(el("span", { class: "missing", text: "image unavailable" })));
  const open = el("button", { class: "thumb", type: "button", title: "Details", onclick: () => showDetail(hit.id) }, img);
  const uri = el("span", { class: "uri", title: visible(hit.id), text: shorten(name) });
  const more = el("button", { class: "more", type: "button", onclick: () => similarTo(hit.id) }, "More like this");
  const line = el("div", { class: "line" },
    el("span", { class: "rank", text: `#${hit.rank}` }),
    el("span", { class: "dist", title: "cosine distance", text: hit.distance.toFixed(4) }));
  if (hit.matched) line.append(el("span", { class: "why", title: "why it matched", text: hit.matched.join(" + ") }));
  const parts = [line, uri];
  if (hit.snippet) parts.push(el("span", { class: "snippet", title: "text in the image", text: visible(hit.snippet) }));
  if (meta.media === "video") parts.push(moment(hit));
  return el("article", { class: "card", "data-id": hit.id }, open, el("div", { class: "meta" }, ...parts, more));
}

// A video frame's time (and the video's other matching times); a link to the video at that
// time (its id is `<video uri>#t=<s>`) when a browser can open the source.
function moment(hit) {
  const also = (hit.times || []).length ? ` (also ${hit.times.join(", ")} s)` : "";
  const text = `▶ t=${hit.metadata.frame_t} s${also}`;
  if (/^https?:\/\//.test(hit.id)) {
    return el("a", { class: "moment", href: hit.id, target: "_blank", rel: "noopener noreferrer", text });
  }
  return el("span", { class: "moment", title: visible(hit.id), text });
}

function similarTo(id) {
  const params = filterParams(state());
  params.set("similar", id);
  go(params);
}

function showHits(result, label) {
  const grid = $("grid");
  document.body.dataset.shown = location.search;  // which search the grid shows (tests wait on it)
  grid.replaceChildren(...result.hits.map(card));
  if (!result.hits.length) grid.append(el("p", { class: "empty", text: "No hits. Loosen the filters?" }));
  const n = result.hits.length;
  const cached = result.embedding_cached ? "query vector cached" : "query embedded";
  setStatus(`${n} hit${n === 1 ? "" : "s"} ${label} · ${result.took_ms.toFixed(1)} ms · ${cached}`);
}

function showMode(text, id) {
  const mode = $("mode");
  if (!text) { mode.hidden = true; mode.replaceChildren(); return; }
  const parts = [];
  if (id) parts.push(el("img", { src: `${recordUrl("thumbnail", id)}?size=128`, alt: "" }));
  parts.push(el("span", { text: text, title: id ? visible(id) : "" }));
  parts.push(el("button", { type: "button", onclick: () => go(filterParams(state())) }, "× Clear"));
  mode.replaceChildren(...parts);
  mode.hidden = false;
}

async function render() {
  const params = state();
  for (const name of FILTERS) $(`f-${name}`).value = params.get(name) || "";
  if (FILTERS.some((name) => name !== "k" && params.get(name))) $("filters").open = true;
  $("q").value = params.get("q") || "";
  $("summary").hidden = true;
  const query = filterParams(params);
  try {
    if (params.get("similar")) {
      const id = params.get("similar");
      showMode(`More like ${shorten(id, 70)}`, id);
      showHits(await api(`${recordUrl("similar", id)}?${query}`), "like this one");
    } else if (params.get("upload")) {
      query.set("upload", params.get("upload"));
      showMode("Similar to your uploaded image");
      showHits(await api(`/api/search?${query}`), "like your image");
    } else if (params.get("q")) {
      query.set("q", params.get("q"));
      showMode("");
      showHits(await api(`/api/search?${query}`), `for “${params.get("q")}”`);
      if (config.summaries) $("summary").replaceChildren(el("button", { type: "button", id: "summarize", onclick: summarize }, "Summarize the top hits (OpenAI)"));
      $("summary").hidden = !config.summaries;
    } else {
      showMode("");
      $("grid").replaceChildren();
      setStatus("Type what you are looking for, or upload an image.");
    }
  } catch (err) {
    $("grid").replaceChildren();
    document.body.dataset.shown = location.search;
    setStatus(err.message, true);
  }
  const detail = params.get("detail");
  if (detail) openDetail(detail); else if ($("detail").open) $("detail").close();
}

async function summarize() {
  const params = state();
  const query = filterParams(params);
  query.set("q", params.get("q"));
  const box = $("summary");
  box.replaceChildren(el("span", { text: "Asking the model…" }));
  try {
    const result = await api(`/api/summary?${query}`, { method: "POST" });
    const list = el("ol", {}, ...result.sources.map((s) => el("li", {},
      el("b", { text: s.label }), " ", el("span", { class: "uri", title: visible(s.id), text: shorten(s.id, 90) }))));
    box.replaceChildren(el("b", { text: `Summary (${result.model})` }), "\n" + result.text, list);
  } catch (err) {
    box.replaceChildren(el("span", { class: "error", text: err.message }));
  }
}

async function upload(file) {
  const params = filterParams(state());
  const form = new FormData();
  form.append("file", file);
  setStatus(`Searching with ${file.name}…`);
  try {
    const result = await api(`/api/search/image?${params}`, { method: "POST", body: form });
    params.set("upload", result.upload_id);
    history.pushState(null, "", "?" + params);
    $("q").value = "";
    showMode(`Similar to your uploaded image ${shorten(file.name, 50)}`);
    showHits(result, "like your image");
  } catch (err) {
    setStatus(err.message, true);
  }
}

function showDetail(id) {
  const params = state();
  params.set("detail", id);
  history.pushState(null, "", "?" + params);
  openDetail(id);
}

async function openDetail(id) {
  const dialog = $("detail");
  $("detail-title").textContent = visible(id);
  $("detail-img").src = `${recordUrl("thumbnail", id)}?size=1024`;
  $("detail-img").alt = visible(id);
  $("detail-meta").replaceChildren();
  $("detail-similar").onclick = () => { dialog.close(); similarTo(id); };
  if (!dialog.open) dialog.showModal();
  try {
    const record = await api(recordUrl("record", id));
    const meta = record.metadata;
    if (meta.key) $("detail-title").textContent = visible(meta.bucket ? `${meta.bucket}/${meta.key}` : meta.key);
    $("detail-meta").replaceChildren(...Object.entries(record.metadata).sort().map(([key, value]) =>
      el("tr", {}, el("th", { text: key }), el("td", { text: visible(Array.isArray(value) ? value.join(", ") : value) }))));
  } catch (err) {
    $("detail-meta").replaceChildren(el("tr", {}, el("td", { class: "error", text: err.message })));
  }
}

function closeDetail() {
  const params = state();
  if (params.has("detail")) {
    params.delete("detail");
    history.pushState(null, "", params.toString() ? "?" + params : location.pathname);
  }
}

function showLogin() { $("login").hidden = false; $("token").focus(); }

async function showStats() {
  try {
    const s = await api("/api/stats");
    const parts = [`${s.records.toLocaleString()} images in “${s.collection}”`, `dim ${s.dim}`];
    const run = s.last_ingest;
    if (run) parts.push(`last ingest ${(run.finished_at || "?").replace("T", " ").slice(0, 16)} UTC: ${run.embedded} embedded, ${run.deleted} deleted, ${run.failed} failed`);
    $("stats").textContent = parts.join(" · ");
  } catch (err) {
    $("stats").textContent = `store: ${err.message}`;
  }
}

function wire() {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const params = filterParams(new URLSearchParams(new FormData($("search"))));
    const text = $("q").value.trim();
    const current = state();
    if (text) params.set("q", text);
    else for (const mode of ["upload", "similar"]) if (current.get(mode)) params.set(mode, current.get(mode));
    go(params);
  });
  for (const name of FILTERS) $(`f-${name}`).addEventListener("change", () => $("search").requestSubmit());
  $("clear-filters").addEventListener("click", () => {
    for (const name of FILTERS) $(`f-${name}`).value = "";
    $("search").requestSubmit();
  });
  $("file").addEventListener("change", () => { if ($("file").files[0]) upload($("file").files[0]); $("file").value = ""; });
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("close", closeDetail);
  $("detail").addEventListener("click", (event) => { if (event.target === $("detail")) $("detail").close(); });
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch("/api/session", { method: "POST", headers: { Authorization: `Bearer ${$("token").value}` } });
    if (response.ok) { $("login").hidden = true; render(); showStats(); } else setStatus("Wrong token.", true);
  });
  document.addEventListener("keydown", (event) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
    if (event.key === "/" && !typing && !$("detail").open) { event.preventDefault(); $("q").focus(); $("q").select(); }
  });
  window.addEventListener("popstate", render);
}

async function start() {
  wire();
  try { config = await api("/api/config"); } catch (err) { setStatus(err.message, true); }
  await render();
  showStats();
  if (!state().get("detail")) $("q").focus();
}

start();
