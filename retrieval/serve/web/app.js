// The search page: talks to the JSON API under /api; no framework, no build step, nothing from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f", "#bab0ac"];
const MAP_BG = "#f6f6f3";

// query: {kind: "text", text} | {kind: "image", file, url} | {kind: "similar", id, path}
const state = { query: null, hits: [], view: "grid", seq: 0, map: null, stats: null };

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: report the status below
  }
  if (!response.ok) {
    throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  }
  return body;
}

function upload(file) {
  const form = new FormData();
  form.append("image", file, file.name || "image");
  return { method: "POST", body: form };
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function baseName(path) {
  return path ? path.split(/[\\/]/).pop() : "";
}

function showQuery(query) {
  const label = $("query-label");
  label.replaceChildren();
  const text = document.createElement("span");
  if (query.kind === "text") {
    text.textContent = `“${query.text}”`;
  } else {
    const img = document.createElement("img");
    img.alt = "";
    img.src = query.kind === "image" ? query.url : `/api/images/${query.id}/thumbnail?size=small`;
    label.append(img);
    text.textContent = query.kind === "image"
      ? `like ${query.file.name || "the dropped image"}`
      : `more like ${baseName(query.path) || "#" + query.id}`;
  }
  label.append(text);
}

// -- searching -------------------------------------------------------------------------------------------

async function search(query) {
  const seq = ++state.seq;
  if (state.query && state.query.kind === "image" && state.query !== query) URL.revokeObjectURL(state.query.url);
  state.query = query;
  state.map = null;
  if (query.kind !== "text") $("q").value = "";
  showQuery(query);
  setStatus("Searching…");
  const k = $("k").value;
  const started = performance.now();
  try {
    let data;
    if (query.kind === "text") {
      data = await api(`/api/search?${new URLSearchParams({ q: query.text, k })}`);
    } else if (query.kind === "image") {
      data = await api(`/api/search/image?k=${k}`, upload(query.file));
    } else {
      data = await api(`/api/similar/${query.id}?k=${k}`);
    }
    if (seq !== state.seq) return;
    state.hits = data.results;
    renderGrid();
    const ms = Math.round(performance.now() - started);
    setStatus(`${data.results.length} results · ${ms} ms`);
    if (state.view === "map") loadMap();
  } catch (error) {
    if (seq !== state.seq) return;
    state.hits = [];
    renderGrid();
    setStatus(error.message, true);
  }
}

function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  $("empty").hidden = state.hits.length > 0 || state.query !== null;
  for (const hit of state.hits) {
    const figure = document.createElement("figure");
    figure.className = "hit";
    figure.dataset.id = hit.id;

    const button = document.createElement("button");
    button.type = "button";
    button.className = "thumb";
    button.title = `More like ${hit.path}`;
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = hit.path;
    img.loading = "lazy";
    img.width = 256;
    img.height = 256;
    button.append(img);
    button.addEventListener("click", () => search({ kind: "similar", id: hit.id, path: hit.path }));

    const caption = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    score.title = "cosine similarity with the query";
    const name = document.createElement("a");
    name.className = "name";
    name.href = hit.image;
    name.target = "_blank";
    name.rel = "noopener";
    name.textContent = baseName(hit.path);
    const when = hit.captured_at ? ` · taken ${hit.captured_at.replace("T", " ")}` : "";
    name.title = `${hit.path} · ${hit.width}×${hit.height}${when} · open the original`;
    caption.append(score, name);
    figure.append(button, caption);
    grid.append(figure);
  }
}

// -- views -------------------------------------------------------------------------------------------------

function showView(view) {
  state.view = view;
  $("tab-grid").setAttribute("aria-selected", String(view === "grid"));
  $("tab-map").setAttribute("aria-selected", String(view === "map"));
  $("grid").hidden = view !== "grid";
  $("mapview").hidden = view !== "map";
  if (view === "map") loadMap();
}

// -- the map -------------------------------------------------------------------------------------------------

async function loadMap() {
  resizeCanvas();
  if (!state.query || state.hits.length === 0) {
    state.map = null;
    $("map-info").textContent = "Search first: the map shows the neighbourhood of the results.";
    $("legend").replaceChildren();
    drawMap();
    return;
  }
  if (state.map && state.map.query === state.query) {
    drawMap();
    return;
  }
  const seq = state.seq;
  const query = state.query;
  const n = Math.max(4, Math.min(state.hits.length, 200));
  const expand = n <= 100 ? 2 : 0; // each result's own neighbours, for context
  $("map-info").textContent = "Laying out the map…";
  const started = performance.now();
  try {
    let data;
    if (query.kind === "text") {
      data = await api(`/api/map?${new URLSearchParams({ q: query.text, n, expand })}`);
    } else if (query.kind === "image") {
      data = await api(`/api/map/image?n=${n}&expand=${expand}`, upload(query.file));
    } else {
      data = await api(`/api/map?like=${query.id}&n=${n}&expand=${expand}`);
    }
    if (seq !== state.seq) return;
    state.map = { query, data, images: new Map(), view: null, hover: null };
    for (const point of data.points) {
      const src = point.thumbnail || (point.role === "query" && query.kind === "image" ? query.url : null);
      if (!src) continue;
      const img = new Image();
      img.onload = scheduleDraw;
      img.src = src;
      state.map.images.set(point, img);
    }
    const ms = Math.round(performance.now() - started);
    $("map-info").textContent = `${data.points.length} points · ${data.clusters} clusters · ` +
      `trustworthiness ${data.trustworthiness.toFixed(2)} · ${ms} ms`;
    renderLegend(data);
    fitMap();
    drawMap();
  } catch (error) {
    if (seq !== state.seq) return;
    state.map = null;
    $("map-info").textContent = error.message;
    $("legend").replaceChildren();
    drawMap();
  }
}

function renderLegend(data) {
  const legend = $("legend");
  legend.replaceChildren();
  const counts = new Map();
  for (const p of data.points) if (p.cluster >= 0) counts.set(p.cluster, (counts.get(p.cluster) || 0) + 1);
  const star = document.createElement("li");
  star.textContent = `★ query: ${data.title}`;
  legend.append(star);
  for (const [cluster, count] of [...counts].sort((a, b) => a[0] - b[0])) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = PALETTE[cluster % PALETTE.length];
    item.append(swatch, `cluster ${cluster + 1} · ${count}`);
    legend.append(item);
  }
  const note = document.createElement("li");
  note.className = "muted";
  note.textContent = "drag to pan · scroll to zoom · click for more like it";
  legend.append(note);
}

function resizeCanvas() {
  const canvas = $("map");
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio);
  const height = Math.round(canvas.clientHeight * ratio);
  if (width && height && (canvas.width !== width || canvas.height !== height)) {
    canvas.width = width;
    canvas.height = height;
  }
}

function fitMap() {
  const m = state.map;
  if (!m) return;
  const canvas = $("map");
  const xs = m.data.points.map((p) => p.x);
  const ys = m.data.points.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = 60;
  const w = canvas.clientWidth || 800;
  const h = canvas.clientHeight || 600;
  const scale = Math.min((w - 2 * pad) / Math.max(x1 - x0, 1e-6), (h - 2 * pad) / Math.max(y1 - y0, 1e-6));
  m.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale, fit: scale };
}

function toScreen(view, p) {
  const canvas = $("map");
  return [
    (p.x - view.cx) * view.scale + canvas.clientWidth / 2,
    (p.y - view.cy) * view.scale + canvas.clientHeight / 2,
  ];
}

function pointSize(view, p) {
  const zoom = Math.min(3, Math.max(0.7, Math.sqrt(view.scale / view.fit)));
  const base = p.role === "query" ? 60 : p.role === "result" ? 46 : 30;
  return base * zoom;
}

// Points in drawing order: context first, then results from worst to best, the query on top.
function drawOrder(points) {
  const rank = (p) => (p.role === "query" ? 2 : p.role === "result" ? 1 : 0);
  return [...points].sort((a, b) => rank(a) - rank(b) || a.score - b.score);
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    drawMap();
  });
}

function drawMap() {
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  const ratio = canvas.width / (canvas.clientWidth || 1);
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = MAP_BG;
  ctx.fillRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  const m = state.map;
  canvas.dataset.points = m ? m.data.points.length : 0;
  if (!m || !m.view) {
    canvas.dataset.thumbs = 0;
    return;
  }
  let thumbs = 0;
  for (const p of drawOrder(m.data.points)) {
    const [x, y] = toScreen(m.view, p);
    const size = pointSize(m.view, p);
    const colour = p.role === "query" ? "#111" : PALETTE[p.cluster % PALETTE.length];
    const img = m.images.get(p);
    const left = x - size / 2;
    const top = y - size / 2;
    ctx.globalAlpha = p.role === "context" ? 0.8 : 1;
    ctx.fillStyle = colour;
    ctx.fillRect(left - 3, top - 3, size + 6, size + 6);
    if (img && img.complete && img.naturalWidth > 0) {
      const side = Math.min(img.naturalWidth, img.naturalHeight); // crop to a centred square
      ctx.drawImage(img, (img.naturalWidth - side) / 2, (img.naturalHeight - side) / 2, side, side,
        left, top, size, size);
      thumbs += 1;
    } else if (p.role === "query") {
      ctx.fillStyle = "#fff";
      ctx.fillRect(left, top, size, size);
    }
    if (p.role === "query") drawStar(ctx, x, top - 14, 11);
    if (m.hover === p) {
      ctx.globalAlpha = 1;
      ctx.strokeStyle = "#111";
      ctx.lineWidth = 2;
      ctx.strokeRect(left - 5, top - 5, size + 10, size + 10);
    }
  }
  ctx.globalAlpha = 1;
  canvas.dataset.thumbs = thumbs;
}

function drawStar(ctx, x, y, r) {
  ctx.beginPath();
  for (let i = 0; i < 10; i++) {
    const radius = i % 2 ? r * 0.45 : r;
    const angle = -Math.PI / 2 + (i * Math.PI) / 5;
    ctx.lineTo(x + radius * Math.cos(angle), y + radius * Math.sin(angle));
  }
  ctx.closePath();
  ctx.fillStyle = "#111";
  ctx.fill();
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 1.5;
  ctx.stroke();
}

function pointAt(clientX, clientY) {
  const m = state.map;
  if (!m || !m.view) return null;
  const rect = $("map").getBoundingClientRect();
  const mx = clientX - rect.left;
  const my = clientY - rect.top;
  const order = drawOrder(m.data.points);
  for (let i = order.length - 1; i >= 0; i--) {
    const p = order[i];
    const [x, y] = toScreen(m.view, p);
    const half = pointSize(m.view, p) / 2 + 3;
    if (Math.abs(mx - x) <= half && Math.abs(my - y) <= half) return p;
  }
  return null;
}

function showTip(p, clientX, clientY) {
  const tip = $("map-tip");
  if (!p) {
    tip.hidden = true;
    return;
  }
  const rect = $("mapview").getBoundingClientRect();
  const what = p.role === "query" ? `query: ${state.map.data.title}` : p.path;
  const rank = p.rank ? ` · #${p.rank}` : p.role === "context" ? " · neighbour" : "";
  const cluster = p.cluster >= 0 ? ` · cluster ${p.cluster + 1}` : "";
  tip.textContent = `${what} · ${p.score.toFixed(3)}${rank}${cluster}`;
  tip.style.left = `${Math.min(clientX - rect.left + 14, rect.width - 260)}px`;
  tip.style.top = `${clientY - rect.top + 14}px`;
  tip.hidden = false;
}

function setupMapInput() {
  const canvas = $("map");
  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.map || !state.map.view) return;
    drag = { x: event.clientX, y: event.clientY, cx: state.map.view.cx, cy: state.map.view.cy, moved: false };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    const m = state.map;
    if (!m || !m.view) return;
    if (drag) {
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
      if (drag.moved) {
        canvas.classList.add("panning");
        m.view.cx = drag.cx - dx / m.view.scale;
        m.view.cy = drag.cy - dy / m.view.scale;
        showTip(null);
        scheduleDraw();
        return;
      }
    }
    const p = pointAt(event.clientX, event.clientY);
    if (p !== m.hover) {
      m.hover = p;
      scheduleDraw();
    }
    canvas.classList.toggle("over", Boolean(p && p.id !== null));
    showTip(p, event.clientX, event.clientY);
  });
  canvas.addEventListener("pointerup", (event) => {
    const wasClick = drag && !drag.moved;
    drag = null;
    canvas.classList.remove("panning");
    if (!wasClick) return;
    const p = pointAt(event.clientX, event.clientY);
    if (p && p.id !== null && p.role !== "query") {
      showTip(null);
      search({ kind: "similar", id: p.id, path: p.path });
    }
  });
  canvas.addEventListener("pointerleave", () => {
    if (state.map) state.map.hover = null;
    showTip(null);
    scheduleDraw();
  });
  canvas.addEventListener("wheel", (event) => {
    const m = state.map;
    if (!m || !m.view) return;
    event.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const sx = event.clientX - rect.left - canvas.clientWidth / 2;
    const sy = event.clientY - rect.top - canvas.clientHeight / 2;
    const factor = Math.exp(-event.deltaY * 0.0015);
    const scale = Math.min(m.view.fit * 40, Math.max(m.view.fit * 0.2, m.view.scale * factor));
    // keep the world point under the cursor where it is
    m.view.cx += sx / m.view.scale - sx / scale;
    m.view.cy += sy / m.view.scale - sy / scale;
    m.view.scale = scale;
    scheduleDraw();
  }, { passive: false });
  $("map-fit").addEventListener("click", () => {
    fitMap();
    drawMap();
  });
  new ResizeObserver(() => {
    resizeCanvas();
    drawMap();
  }).observe(canvas);
}

// -- input ---------------------------------------------------------------------------------------------------

function searchFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    setStatus(`${file.name} is not an image`, true);
    return;
  }
  search({ kind: "image", file, url: URL.createObjectURL(file) });
}

function setupInput() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    if (text) search({ kind: "text", text });
  });
  $("file").addEventListener("change", (event) => {
    searchFile(event.target.files[0]);
    event.target.value = "";
  });
  $("k").addEventListener("change", () => {
    if (state.query) search(state.query);
  });
  $("tab-grid").addEventListener("click", () => showView("grid"));
  $("tab-map").addEventListener("click", () => showView("map"));

  let depth = 0; // dragenter/dragleave fire for every child crossed
  document.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) document.body.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    const files = event.dataTransfer ? event.dataTransfer.files : null;
    if (files && files.length) searchFile(files[0]);
  });
}

async function loadStats() {
  try {
    const stats = await api("/api/stats");
    state.stats = stats;
    $("stats").textContent = `${stats.index} · ${stats.images.toLocaleString()} images · ${stats.embedder_id}`;
    if (!stats.text_search) {
      $("q").disabled = true;
      $("q").placeholder = "This index's model has no text search: drop an image instead";
      $("search-form").querySelector("button").disabled = true;
    }
  } catch (error) {
    setStatus(error.message, true);
  }
}

setupInput();
setupMapInput();
showView("grid");
loadStats();
