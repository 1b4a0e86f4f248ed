// The search page: talks to the JSON API under /api; no framework, no build step, nothing from elsewhere.
// It runs under a strict Content-Security-Policy (default-src 'self'): no inline code, no eval, and no blob:
// or data: URLs, so a dropped image is decoded with createImageBitmap and drawn on canvases.
"use strict";

const $ = (id) => document.getElementById(id);

// query: {kind: "text", text} | {kind: "image", file, bitmap} | {kind: "similar", id, path}
// (bitmap: a promise of the decoded file, null when the browser cannot decode it)
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

// The filter bar's fields -> the API's filter parameters (see /openapi.json); empty fields are left out.
const FILTER_FIELDS = { "f-in": "in", "f-after": "after", "f-before": "before", "f-camera": "camera" };

function withFilters(params) {
  const query = new URLSearchParams(params);
  let active = 0;
  for (const [id, name] of Object.entries(FILTER_FIELDS)) {
    const value = $(id).value.trim();
    if (value) {
      query.append(name, value);
      active += 1;
    }
  }
  $("filters-count").textContent = active ? `(${active})` : "";
  return query;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function baseName(path) {
  return path ? path.split(/[\\/]/).pop() : "";
}

// A file name that shortens in the middle: the start gives way (ellipsis), the extension always shows.
function nameElement(tag, name) {
  const element = document.createElement(tag);
  element.classList.add("filename");
  const dot = name.lastIndexOf(".");
  const keep = Math.min(name.length, dot > 0 ? name.length - dot + 4 : 6);
  const head = document.createElement("span");
  head.className = "head";
  head.textContent = name.slice(0, name.length - keep);
  const tail = document.createElement("span");
  tail.className = "tail";
  tail.textContent = name.slice(name.length - keep);
  element.append(head, tail);
  return element;
}

// A thumbnail that shows a placeholder (class "loading") until it loads, and says so (class "failed") if not.
function thumbnailImage(holder, src, alt) {
  const img = document.createElement("img");
  img.alt = alt;
  holder.classList.add("loading");
  img.addEventListener("load", () => holder.classList.remove("loading"));
  img.addEventListener("error", () => {
    holder.classList.remove("loading");
    holder.classList.add("failed");
  });
  img.src = src;
  return img;
}

function showQuery(query) {
  const label = $("query-label");
  label.replaceChildren();
  if (query.kind === "text") {
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = `“${query.text}”`;
    label.title = query.text;
    label.append(text);
    return;
  }
  const picture = document.createElement("span");
  picture.className = "picture";
  if (query.kind === "image") {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 64;
    picture.classList.add("loading");
    picture.append(canvas);
    query.bitmap.then((bitmap) => {
      picture.classList.remove("loading");
      if (!bitmap) {
        picture.classList.add("failed");
        return;
      }
      const side = Math.min(bitmap.width, bitmap.height); // a centred square, as object-fit: cover
      canvas.getContext("2d").drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2,
        side, side, 0, 0, canvas.width, canvas.height);
    });
  } else {
    picture.append(thumbnailImage(picture, `/api/images/${query.id}/thumbnail?size=small`, ""));
  }
  const name = query.kind === "image" ? query.file.name || "the dropped image" : baseName(query.path);
  label.title = query.kind === "image" ? name : query.path || `#${query.id}`;
  label.append(picture, query.kind === "image" ? "like " : "more like ",
    nameElement("span", name || `#${query.id}`));
}

// -- searching -------------------------------------------------------------------------------------------

async function search(query) {
  const seq = ++state.seq;
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
      data = await api(`/api/search?${withFilters({ q: query.text, k })}`);
    } else if (query.kind === "image") {
      data = await api(`/api/search/image?${withFilters({ k })}`, upload(query.file));
    } else {
      data = await api(`/api/similar/${query.id}?${withFilters({ k })}`);
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
    const img = thumbnailImage(button, hit.thumbnail, hit.path);
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
    const name = nameElement("a", baseName(hit.path));
    name.classList.add("name");
    name.setAttribute("aria-label", baseName(hit.path)); // one name, not its two halves
    name.href = hit.image;
    name.target = "_blank";
    name.rel = "noopener";
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

// -- the map: drawn by the map viewer (/static/map/viewer.js), the one the .html maps also run ---------------

const viewer = RetrievalMap.create({
  canvas: $("map"),
  tip: $("map-tip"),
  legend: $("legend"),
  hint: "click it for more like it",
  canOpen: (p) => p.id !== null && p.role !== "query",
  onOpen: (p) => search({ kind: "similar", id: p.id, path: p.path }),
});

async function loadMap() {
  if (!state.query || state.hits.length === 0) {
    state.map = null;
    $("map-info").textContent = "Search first: the map shows the neighbourhood of the results.";
    viewer.clear();
    return;
  }
  if (state.map && state.map.query === state.query) {
    viewer.resize();
    return;
  }
  const seq = state.seq;
  const query = state.query;
  state.map = { query, data: null };
  const n = Math.max(4, Math.min(state.hits.length, 200));
  const expand = n <= 100 ? 2 : 0; // each result's own neighbours, for context
  $("map-info").textContent = "Laying out the map…";
  const started = performance.now();
  try {
    let data;
    if (query.kind === "text") {
      data = await api(`/api/map?${withFilters({ q: query.text, n, expand })}`);
    } else if (query.kind === "image") {
      data = await api(`/api/map/image?${withFilters({ n, expand })}`, upload(query.file));
    } else {
      data = await api(`/api/map?${withFilters({ like: query.id, n, expand })}`);
    }
    const queryImage = query.kind === "image" ? await query.bitmap : null;
    if (seq !== state.seq) return;
    state.map.data = data;
    const ms = Math.round(performance.now() - started);
    if (!data.points.length) {  // a filter that allows no image: an empty map, not an error
      $("map-info").textContent = "no images match the filter";
      viewer.clear();
      return;
    }
    $("map-info").textContent = `${data.points.length} points · ${data.clusters} clusters · ` +
      `trustworthiness ${data.trustworthiness.toFixed(2)} · ${ms} ms`;
    viewer.show(data, queryImage);
  } catch (error) {
    if (seq !== state.seq) return;
    state.map = null;
    $("map-info").textContent = error.message;
    viewer.clear();
  }
}

function setupMapInput() {
  $("map-fit").addEventListener("click", () => viewer.fit());
}

// -- input ---------------------------------------------------------------------------------------------------

function searchFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    setStatus(`${file.name} is not an image`, true);
    return;
  }
  search({ kind: "image", file, bitmap: createImageBitmap(file).catch(() => null) });
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
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.query) search(state.query);
    else withFilters({});
  });
  $("filters-clear").addEventListener("click", () => {
    for (const id of Object.keys(FILTER_FIELDS)) $(id).value = "";
    if (state.query) search(state.query);
    else withFilters({});
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
    const banner = $("banner");
    banner.hidden = !stats.random_weights;
    banner.textContent = stats.random_weights
      ? `This index's model, ${stats.model}, runs on random weights: its results mean nothing. ` +
        "Build the index again with pretrained weights for real search."
      : "";
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
