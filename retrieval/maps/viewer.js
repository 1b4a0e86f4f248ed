// The map viewer: one canvas drawing of a NeighbourhoodMap, shared by the search page's map tab (served as
// /static/map/viewer.js) and the standalone .html map (inlined there, so that page opens offline).
// It defines one global, RetrievalMap, and needs nothing a strict Content-Security-Policy refuses: no eval,
// no inline handlers, no style attributes (only the CSS object model), no network beyond the pictures' URLs.
//
// Data: the JSON of /api/map (and of the .html map): {title, clusters, note?, colourBy?, points: [{role,
// id, path, x, y, score, rank, cluster, thumbnail}]}, thumbnail a URL or null. y points up, as in the PNG.
(function (global) {
  "use strict";

  // matplotlib's tab10 and tab20, as retrieval.maps.render.cluster_colours picks them for the PNG.
  const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf"];
  const TAB20 = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
    "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22",
    "#dbdb8d", "#17becf", "#9edae5"];
  // viridis at 11 even steps: the PNG's colour map for scores.
  const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
    "#7ad151", "#bddf26", "#fde725"];
  const BG = "#f6f6f3";
  const QUERY_COLOUR = "#111111";
  const STAR_COLOUR = "#ffd21f";
  const HOVER_COLOUR = "#ff3b30";
  const PLACEHOLDER = "#e9e9e4";
  const PLACEHOLDER_LIGHT = "#f8f8f5";
  const FAILED = "#f1f1ed";
  const FAILED_MARK = "#a9a9a2";
  // Fit the central 98% of the points on each axis: a few far outliers must not shrink all the others.
  const FIT_TRIM = 0.01;
  const MARGIN = 50;
  const SHIMMER_MS = 1400;
  const viewers = new WeakMap();

  function clamp(v, lo, hi) { return Math.min(Math.max(v, lo), hi); }

  // The range of `values` once the lowest and the highest `trim` of them are left out.
  function trimmedRange(values, trim) {
    const s = values.slice().sort(function (a, b) { return a - b; }), k = Math.floor(s.length * trim);
    return [s[k], s[s.length - 1 - k]];
  }

  function rgb(hex) { return [1, 3, 5].map(function (k) { return parseInt(hex.slice(k, k + 2), 16); }); }

  function ramp(t) {
    const pos = clamp(t, 0, 1) * (VIRIDIS.length - 1), k = Math.min(Math.floor(pos), VIRIDIS.length - 2);
    const a = rgb(VIRIDIS[k]), b = rgb(VIRIDIS[k + 1]), f = pos - k;
    return "rgb(" + a.map(function (c, j) { return Math.round(c + (b[j] - c) * f); }).join(",") + ")";
  }

  function element(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Context first, then results from worst to best score, the query last: the best stay visible.
  function drawOrder(points) {
    const rank = { context: 0, result: 1, query: 2 };
    return points.map(function (_, i) { return i; }).sort(function (a, b) {
      return rank[points[a].role] - rank[points[b].role] || points[a].score - points[b].score || a - b;
    });
  }

  /**
   * A viewer on `options.canvas`. Options: tip and legend (elements it fills), hint (what a click does,
   * for the legend), canOpen(point) and onOpen(point) (a click on a picture).
   */
  function create(options) {
    const canvas = options.canvas;
    const ctx = canvas.getContext("2d");
    const tip = options.tip || null;
    const legend = options.legend || null;
    const canOpen = options.canOpen || function () { return false; };
    const still = global.matchMedia && global.matchMedia("(prefers-reduced-motion: reduce)").matches;
    let data = null, points = [], order = [], pictures = [], colours = [], palette = TAB10, mode = "cluster";
    let W = 0, H = 0, dpr = 1, scale = 1, fitScale = 1, tx = 0, ty = 0, side = 48;
    let hover = -1, drag = null, touched = false, queued = false, scoreLo = 0, scoreHi = 1;

    // -- pictures: each point's thumbnail is loading, ready or failed; a text query has none -----------
    function picture(p, given) {
      if (given) return { source: given, state: "ready" };
      if (!p.thumbnail) return p.role === "query" ? null : { source: null, state: "failed" };
      const img = new Image();
      const entry = { source: img, state: "loading" };
      img.decoding = "async";
      img.addEventListener("load", function () { entry.state = "ready"; redraw(); });
      img.addEventListener("error", function () { entry.state = "failed"; redraw(); });
      img.src = p.thumbnail;
      return entry;
    }
    function naturalSize(entry) {
      const s = entry.source;
      return s.naturalWidth !== undefined ? [s.naturalWidth, s.naturalHeight] : [s.width, s.height];
    }

    // -- colours -------------------------------------------------------------------------------------
    function paint() {
      const k = Math.max(data.clusters || 0, 1 + Math.max.apply(null, points.map(function (p) {
        return p.cluster;
      })));
      palette = k <= 10 ? TAB10 : TAB20;
      const scores = points.filter(function (p) { return p.role !== "query"; }).map(function (p) {
        return p.score;
      });
      scoreLo = scores.length ? Math.min.apply(null, scores) : 0;
      scoreHi = scores.length ? Math.max.apply(null, scores) : 1;
      if (scoreHi - scoreLo <= 1e-6) { scoreLo -= 0.05; scoreHi += 0.05; }
      colours = points.map(function (p) {
        if (p.role === "query") return QUERY_COLOUR;
        if (mode === "score") return ramp((p.score - scoreLo) / (scoreHi - scoreLo));
        return palette[p.cluster % palette.length];
      });
    }

    // -- geometry: screen x = tx + x * scale, screen y = ty - y * scale (y up) --------------------------
    function legendRoom() {
      return legend && W > 900 && !legend.hidden ? legend.offsetWidth + 12 : 0;
    }
    function fit() {
      touched = false;
      if (!points.length || !W || !H) return;
      const xr = trimmedRange(points.map(function (p) { return p.x; }), FIT_TRIM);
      const yr = trimmedRange(points.map(function (p) { return p.y; }), FIT_TRIM);
      const x0 = xr[0], x1 = xr[1], y0 = yr[0], y1 = yr[1];
      const right = legendRoom();
      side = clamp(0.85 * Math.sqrt((W - right) * H / points.length), 24, 80);
      const margin = Math.min(MARGIN, W / 4, H / 4) + side / 2;
      scale = fitScale = Math.max(Math.min(
        (W - right - 2 * margin) / Math.max(x1 - x0, 1e-9),
        (H - 2 * margin) / Math.max(y1 - y0, 1e-9)), 1e-9);
      tx = (W - right) / 2 - ((x0 + x1) / 2) * scale;
      ty = H / 2 + ((y0 + y1) / 2) * scale;
    }
    function sx(p) { return tx + p.x * scale; }
    function sy(p) { return ty - p.y * scale; }
    function pointSide(p) {
      const s = side * clamp(Math.sqrt(scale / fitScale), 0.6, 2.6);
      return p.role === "context" ? s * 0.7 : s;
    }
    function box(i) {
      const p = points[i], s = pointSide(p), pic = pictures[i];
      let w = s, h = s;
      if (pic && pic.state === "ready") {
        const size = naturalSize(pic), r = size[0] / Math.max(size[1], 1);
        if (r >= 1) h = s / r; else w = s * r;
      }
      return [sx(p) - w / 2, sy(p) - h / 2, w, h];
    }
    function resize() {
      dpr = global.devicePixelRatio || 1;
      W = canvas.clientWidth;
      H = canvas.clientHeight;
      if (!W || !H) return;  // hidden: nothing to draw until it shows
      const width = Math.round(W * dpr), height = Math.round(H * dpr);
      if (canvas.width !== width || canvas.height !== height) {
        canvas.width = width;
        canvas.height = height;
      }
      if (!touched) fit();  // once the reader has zoomed or panned, a resize keeps their view
      redraw();
    }

    // -- drawing ---------------------------------------------------------------------------------------
    function star(x, y, r) {
      ctx.beginPath();
      for (let k = 0; k < 10; k++) {
        const a = -Math.PI / 2 + (k * Math.PI) / 5, rr = k % 2 ? r * 0.45 : r;
        ctx.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
      }
      ctx.closePath();
      ctx.fillStyle = STAR_COLOUR;
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#000";
      ctx.stroke();
    }
    // Not loaded yet: a light band sweeping across the tile (a still tile for reduced motion).
    function shimmer(b, now) {
      ctx.fillStyle = PLACEHOLDER;
      ctx.fillRect(b[0], b[1], b[2], b[3]);
      if (still) return;
      const t = (now % SHIMMER_MS) / SHIMMER_MS, half = b[2] * 0.4, cx = b[0] - half + t * (b[2] + 2 * half);
      const g = ctx.createLinearGradient(cx - half, 0, cx + half, 0);
      g.addColorStop(0, PLACEHOLDER);
      g.addColorStop(0.5, PLACEHOLDER_LIGHT);
      g.addColorStop(1, PLACEHOLDER);
      ctx.fillStyle = g;
      ctx.fillRect(b[0], b[1], b[2], b[3]);
    }
    // Could not be loaded: a pale tile with a crossed-out picture frame.
    function failed(b) {
      ctx.fillStyle = FAILED;
      ctx.fillRect(b[0], b[1], b[2], b[3]);
      const s = Math.min(b[2], b[3]) * 0.36, cx = b[0] + b[2] / 2, cy = b[1] + b[3] / 2;
      ctx.strokeStyle = FAILED_MARK;
      ctx.lineWidth = 1.5;
      ctx.strokeRect(cx - s, cy - s * 0.75, 2 * s, 1.5 * s);
      ctx.beginPath();
      ctx.moveTo(cx - s, cy + s * 0.75);
      ctx.lineTo(cx + s, cy - s * 0.75);
      ctx.stroke();
    }
    function draw(now) {
      queued = false;
      if (!W || !H) return;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.fillStyle = BG;
      ctx.fillRect(0, 0, W, H);
      const count = { ready: 0, loading: 0, failed: 0 };
      order.forEach(function (i) {
        const p = points[i], pic = pictures[i];
        if (!pic) return;  // a text query: only its star
        count[pic.state] += 1;
        const b = box(i), edge = p.role === "query" ? 4 : p.role === "context" ? 2 : 3;
        ctx.fillStyle = colours[i];
        ctx.fillRect(b[0] - edge, b[1] - edge, b[2] + 2 * edge, b[3] + 2 * edge);
        if (pic.state === "ready") {
          ctx.fillStyle = "#fff";
          ctx.fillRect(b[0], b[1], b[2], b[3]);
          ctx.globalAlpha = p.role === "context" ? 0.65 : 1;
          ctx.drawImage(pic.source, b[0], b[1], b[2], b[3]);
          ctx.globalAlpha = 1;
        } else if (pic.state === "loading") {
          shimmer(b, now || 0);
        } else {
          failed(b);
        }
      });
      const q = points.findIndex(function (p) { return p.role === "query"; });
      if (q >= 0) {
        if (pictures[q]) {
          const qb = box(q);
          star(qb[0] + qb[2] / 2, qb[1] - 4, 13);
        } else {
          star(sx(points[q]), sy(points[q]), 15);
        }
      }
      if (hover >= 0) {
        const b = box(hover);
        ctx.lineWidth = 3;
        ctx.strokeStyle = HOVER_COLOUR;
        ctx.strokeRect(b[0] - 5, b[1] - 5, b[2] + 10, b[3] + 10);
      }
      canvas.dataset.points = points.length;
      canvas.dataset.thumbs = count.ready;
      canvas.dataset.loading = count.loading;
      canvas.dataset.failed = count.failed;
      if (count.loading && !still) redraw();  // keep the placeholders moving
    }
    function redraw() {
      if (!queued) {
        queued = true;
        global.requestAnimationFrame(draw);
      }
    }

    // -- pointing ------------------------------------------------------------------------------------
    function pick(mx, my) {
      for (let k = order.length - 1; k >= 0; k--) {
        const i = order[k], p = points[i];
        if (!pictures[i]) {
          if (Math.hypot(mx - sx(p), my - sy(p)) < 15) return i;
          continue;
        }
        const b = box(i);
        if (mx >= b[0] - 3 && mx <= b[0] + b[2] + 3 && my >= b[1] - 3 && my <= b[1] + b[3] + 3) return i;
      }
      return -1;
    }
    function local(event) {
      const r = canvas.getBoundingClientRect();
      return [event.clientX - r.left, event.clientY - r.top];
    }
    function hideTip() { if (tip) tip.hidden = true; }
    function showTip(i, clientX, clientY) {
      if (!tip) return;
      const p = points[i], pic = pictures[i];
      tip.replaceChildren();
      if (pic && pic.state === "ready") {
        if (pic.source instanceof HTMLImageElement) {
          const img = element("img");
          img.alt = "";
          img.src = pic.source.src;
          tip.append(img);
        } else {  // a decoded upload (ImageBitmap): drawn, since the page may not load blob: URLs
          const size = naturalSize(pic), f = Math.min(1, 192 / Math.max(size[0], size[1]));
          const c = element("canvas");
          c.width = Math.round(size[0] * f);
          c.height = Math.round(size[1] * f);
          c.getContext("2d").drawImage(pic.source, 0, 0, c.width, c.height);
          tip.append(c);
        }
      }
      tip.append(element("div", "path", p.role === "query" ? "query: " + (p.path || data.title) : p.path));
      if (p.role !== "query") {
        let meta = "score " + p.score.toFixed(4) + " · cluster " + (p.cluster + 1);
        meta += p.role === "result" ? " · rank " + p.rank : " · neighbour of a result";
        if (p.id !== null && p.id !== undefined) meta += " · id " + p.id;
        tip.append(element("div", "meta", meta));
      }
      tip.hidden = false;
      const r = tip.getBoundingClientRect();
      tip.style.left = Math.max(4, Math.min(clientX + 16, global.innerWidth - r.width - 8)) + "px";
      tip.style.top = Math.max(4, Math.min(clientY + 16, global.innerHeight - r.height - 8)) + "px";
    }

    canvas.addEventListener("pointerdown", function (event) {
      if (!points.length || event.button !== 0) return;
      drag = { x: event.clientX, y: event.clientY, tx: tx, ty: ty, moved: false };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", function (event) {
      if (!points.length) return;
      if (drag) {
        const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
        if (drag.moved) {
          canvas.classList.add("panning");
          tx = drag.tx + dx;
          ty = drag.ty + dy;
          touched = true;
          hideTip();
          redraw();
          return;
        }
      }
      const at = local(event), i = pick(at[0], at[1]);
      if (i !== hover) {
        hover = i;
        redraw();
      }
      canvas.classList.toggle("over", i >= 0 && Boolean(canOpen(points[i])));
      if (i >= 0) showTip(i, event.clientX, event.clientY); else hideTip();
    });
    canvas.addEventListener("pointerup", function (event) {
      const click = drag && !drag.moved;
      drag = null;
      canvas.classList.remove("panning");
      if (!click) return;
      const at = local(event), i = pick(at[0], at[1]);
      if (i >= 0 && canOpen(points[i]) && options.onOpen) {
        hideTip();
        options.onOpen(points[i]);
      }
    });
    canvas.addEventListener("pointerleave", function () {
      hover = -1;
      hideTip();
      redraw();
    });
    canvas.addEventListener("wheel", function (event) {
      if (!points.length) return;
      event.preventDefault();
      const at = local(event);
      const f = clamp(Math.exp(-event.deltaY * 0.0015), (fitScale * 0.2) / scale, (fitScale * 40) / scale);
      tx = at[0] - (at[0] - tx) * f;  // the point under the cursor stays where it is
      ty = at[1] - (at[1] - ty) * f;
      scale *= f;
      touched = true;
      redraw();
    }, { passive: false });
    canvas.addEventListener("dblclick", function () {
      fit();
      redraw();
    });
    if (global.ResizeObserver) new global.ResizeObserver(resize).observe(canvas);
    else global.addEventListener("resize", resize);

    // -- the legend ----------------------------------------------------------------------------------
    function key(swatch, text) {
      const row = element("div", "key");
      row.append(swatch, text);
      return row;
    }
    function renderLegend() {
      if (!legend) return;
      legend.replaceChildren();
      legend.hidden = !data;
      if (!data) return;
      const label = element("label", "mode", "frame colour ");
      const select = element("select");
      ["cluster", "score"].forEach(function (m) {
        const option = element("option", "", m);
        option.value = m;
        select.append(option);
      });
      select.value = mode;
      select.addEventListener("change", function () {
        mode = select.value;
        paint();
        renderLegend();
        redraw();
      });
      label.append(select);
      legend.append(label);
      const starKey = element("span", "star", "★");
      legend.append(key(starKey, "query: " + data.title));
      if (mode === "cluster") {
        if (data.note) legend.append(element("div", "note", data.note));
        const counts = new Map();
        points.forEach(function (p) {
          if (p.cluster >= 0) counts.set(p.cluster, (counts.get(p.cluster) || 0) + 1);
        });
        Array.from(counts.keys()).sort(function (a, b) { return a - b; }).forEach(function (c) {
          const swatch = element("span", "swatch");
          swatch.style.background = palette[c % palette.length];
          legend.append(key(swatch, "cluster " + (c + 1) + ": " + counts.get(c) + " images"));
        });
      } else {
        legend.append(element("div", "note", "cosine with the query"));
        const bar = element("div", "ramp");
        bar.style.background = "linear-gradient(to right, " + VIRIDIS.join(", ") + ")";
        const ends = element("div", "ends");
        ends.append(element("span", "", scoreLo.toFixed(3)), element("span", "", scoreHi.toFixed(3)));
        legend.append(bar, ends);
      }
      if (points.some(function (p) { return p.role === "context"; })) {
        legend.append(key(element("span", "swatch context"), "neighbours of results (smaller, faded)"));
      }
      const help = "Scroll to zoom, drag to pan, double-click to fit; hover a picture for details";
      legend.append(element("p", "help", help + (options.hint ? ", " + options.hint : "") + "."));
    }

    const viewer = {
      /** Draw `map`; `queryImage` (an ImageBitmap or image) stands for a query that has no thumbnail URL. */
      show: function (map, queryImage) {
        data = map;
        points = map.points;
        order = drawOrder(points);
        mode = map.colourBy === "score" ? "score" : "cluster";
        pictures = points.map(function (p) { return picture(p, p.role === "query" ? queryImage : null); });
        hover = -1;
        hideTip();
        paint();
        renderLegend();
        touched = false;
        resize();
      },
      clear: function () {
        data = null;
        points = [];
        order = [];
        pictures = [];
        hover = -1;
        hideTip();
        renderLegend();
        resize();
        redraw();
      },
      /** Show the central 98% of the points on each axis. */
      fit: function () {
        fit();
        redraw();
      },
      resize: resize,
      /** Each point's place on the screen (viewport pixels, as a pointer event's clientX/clientY). */
      positions: function () {
        const r = canvas.getBoundingClientRect();
        return points.map(function (p) {
          return { id: p.id, path: p.path, role: p.role, x: r.left + sx(p), y: r.top + sy(p) };
        });
      },
    };
    viewers.set(canvas, viewer);
    return viewer;
  }

  global.RetrievalMap = {
    create: create,
    /** The viewer drawing on `canvas`, if any. */
    viewerOf: function (canvas) { return viewers.get(canvas) || null; },
  };
})(window);
