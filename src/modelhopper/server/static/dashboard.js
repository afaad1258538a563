/* modelhopper dashboard: the run page reads the JSON API (or, in a static report, the
   data embedded in the page) and redraws itself. No dependencies besides uPlot. */
(function () {
  "use strict";

  var TOKEN_KEY = "modelhopper-token";
  var REFRESH_MS = 2000;

  // -- the bearer token: from ?token=..., kept in this browser, never in the page --------
  function token() {
    try { return window.localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function setToken(value) {
    try { window.localStorage.setItem(TOKEN_KEY, value); } catch (e) { /* private mode */ }
  }

  function tokenBox() {
    var params = new URLSearchParams(window.location.search);
    if (params.has("token")) {
      setToken(params.get("token"));
      params.delete("token");
      var rest = params.toString();
      window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
    }
    var state = document.getElementById("token-state");
    var input = document.getElementById("token-input");
    var save = document.getElementById("token-save");
    if (!state) return;
    function show() {
      var has = !!token();
      state.textContent = has ? "token set: you can steer runs" : "read-only";
      state.className = has ? "ok" : "";
      document.body.classList.toggle("can-steer", has);
    }
    save.addEventListener("click", function () { setToken(input.value.trim()); input.value = ""; show(); });
    show();
  }

  // -- helpers ---------------------------------------------------------------------------
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "class") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function color(id) { return "hsl(" + ((id * 137.508) % 360).toFixed(1) + ",65%,45%)"; }

  function fmt(value, digits) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      var a = Math.abs(value);
      if (a !== 0 && (a < 1e-3 || a >= 1e5)) return value.toExponential(2);
      return value.toFixed(digits === undefined ? 4 : digits);
    }
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    var units = ["B", "kB", "MB", "GB", "TB"], i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function seconds(s) {
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(2) + " h";
  }

  function sampled(space) {  // the names a point must give (constants need none)
    return Object.keys(space).filter(function (k) { return space[k] && space[k].type && space[k].type !== "constant"; });
  }

  function paramsText(params) {
    return Object.keys(params).map(function (k) { return k + "=" + fmt(params[k]); }).join(", ");
  }

  // -- data: the API for a live page, the embedded data for a report -------------------------
  function Source(page) {
    this.page = page;
    this.api = "/api/runs/" + encodeURIComponent(page.run.name);
  }

  Source.prototype.get = function (what, query) {
    if (!this.page.live) return Promise.resolve(staticGet(this.page.data, what, query || {}));
    var url = this.api + (what ? "/" + what : "");
    var qs = new URLSearchParams();
    Object.keys(query || {}).forEach(function (k) {
      if (query[k] !== "" && query[k] !== null && query[k] !== undefined) qs.set(k, query[k]);
    });
    if (qs.toString()) url += "?" + qs.toString();
    return fetch(url).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(body.error || r.statusText);
        return body;
      });
    });
  };

  // A report has the data embedded: answer the same questions from it.
  function staticGet(data, what, q) {
    if (what === "curves") {
      var c = data.curves[q.metric] || data.curves[Object.keys(data.curves)[0]];
      var top = Number(q.top) || c.series.length;
      return Object.assign({}, c, { series: c.series.slice(0, top) });
    }
    if (what === "msts") return staticMsts(data.msts, q);
    return data[what || "run"];
  }

  function staticMsts(all, q) {
    var words = (q.q || "").toLowerCase().split(/\s+/).filter(Boolean);
    var rows = all.msts.filter(function (m) {
      if (q.status && m.status !== q.status) return false;
      var text = ["mst_id=" + m.mst_id, "status=" + m.status].concat(Object.keys(m.params).map(function (k) {
        return k + "=" + m.params[k];
      })).join(" ").toLowerCase();
      return words.every(function (w) { return text.indexOf(w) >= 0; });
    });
    function value(m) {
      if (q.sort.indexOf("param:") === 0) return m.params[q.sort.slice(6)];
      return { mst_id: m.mst_id, status: m.status, epochs: m.epochs_done, last: m.last, best: m.best,
               priority: m.priority, parent: m.parent }[q.sort];
    }
    var present = rows.filter(function (m) { var v = value(m); return v !== null && v !== undefined; });
    var missing = rows.filter(function (m) { var v = value(m); return v === null || v === undefined; });
    present.sort(function (a, b) {
      var x = value(a), y = value(b), d = x < y ? -1 : x > y ? 1 : a.mst_id - b.mst_id;
      return q.order === "desc" ? -d : d;
    });
    rows = present.concat(missing);
    return { total: rows.length, n_msts: all.msts.length, offset: q.offset, limit: q.limit,
             items: rows.slice(q.offset, q.offset + q.limit) };
  }

  Source.prototype.post = function (path, body) {
    return fetch(this.api + path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token() },
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(function (r) {
      return r.json().then(function (b) {
        if (!r.ok) throw new Error(b.error || r.statusText);
        return b;
      });
    });
  };

  // -- resource totals ---------------------------------------------------------------------------
  function drawResources(r) {
    var box = document.getElementById("resources");
    var cards = [
      ["compute", seconds(r.compute_seconds), "sum of step seconds on the workers"],
      ["wall", seconds(r.wall_seconds), r.source],
      ["efficiency", (100 * r.efficiency).toFixed(1) + " %", "compute / workers / wall"],
      ["visits", String(r.n_visits), r.n_steps + " steps"],
      ["hops", String(r.n_hops), bytes(r.hop_bytes) + " of model state moved"],
      ["resident shards", r.resident_shard_bytes ? bytes(r.resident_shard_bytes.reduce(function (a, b) { return a + b; }, 0)) : "–",
        r.data_copies ? r.data_copies.toFixed(2) + " copies of the data" : "per worker: one shard"],
    ];
    box.replaceChildren.apply(box, cards.map(function (c) {
      return el("div", { class: "card" }, [
        el("div", { class: "label", text: c[0] }),
        el("div", { class: "value", text: c[1] }),
        el("div", { class: "sub", text: c[2] }),
      ]);
    }));
  }

  // -- learning curves (uPlot) ---------------------------------------------------------------------
  function Curves(source) {
    this.source = source;
    this.box = document.getElementById("curves");
    this.tip = document.getElementById("tooltip");
    this.plot = null;
    this.key = "";
  }

  Curves.prototype.load = function () {
    var self = this;
    var metric = document.getElementById("metric").value;
    var top = document.getElementById("top").value;
    return this.source.get("curves", { metric: metric, top: top, max_points: 300 }).then(function (c) {
      self.draw(c);
    });
  };

  Curves.prototype.draw = function (c) {
    var self = this;
    this.data = c;
    document.getElementById("curves-note").textContent =
      c.series.length + " of " + c.n_msts + " MSTs (best by the run's metric)" +
      (c.epochs.length ? ", " + c.epochs.length + " epochs shown" : "");
    var xs = c.epochs.map(function (e) { return e + 1; });
    var data = [xs].concat(c.series.map(function (s) { return s.values; }));
    var key = c.metric + "|" + c.series.map(function (s) { return s.mst_id; }).join(",");
    if (this.plot && key === this.key) { this.plot.setData(data); return; }
    if (this.plot) this.plot.destroy();
    this.key = key;
    var series = [{ label: "epoch" }].concat(c.series.map(function (s) {
      return { label: "MST " + s.mst_id, stroke: color(s.mst_id), width: 1.5, spanGaps: true,
               points: { show: xs.length <= 30, size: 4 } };
    }));
    var width = Math.max(320, this.box.clientWidth || 800);
    this.plot = new uPlot({
      width: width, height: 320, series: series, legend: { show: false },
      scales: { x: { time: false } },
      axes: [{ label: "epoch" }, { label: c.metric, size: 70 }],
      cursor: { focus: { prox: 30 }, points: { show: false } },
      focus: { alpha: 0.25 },
      hooks: { setCursor: [function (u) { self.hover(u); }] },
    }, data, this.box);
  };

  Curves.prototype.hover = function (u) {
    var idx = u.cursor.idx, top = u.cursor.top;
    if (idx === null || idx === undefined || top === undefined || top < 0) { this.tip.hidden = true; return; }
    var best = -1, bestDist = 25;
    for (var i = 1; i < u.series.length; i++) {
      var v = u.data[i][idx];
      if (v === null || v === undefined) continue;
      var d = Math.abs(u.valToPos(v, "y") - top);
      if (d < bestDist) { best = i; bestDist = d; }
    }
    if (best < 0) { this.tip.hidden = true; return; }
    var s = this.data.series[best - 1];
    this.tip.replaceChildren(
      el("b", { text: "MST " + s.mst_id + " (" + s.status + ")" }),
      el("div", { text: "epoch " + u.data[0][idx] + ": " + this.data.metric + " = " + fmt(u.data[best][idx]) }),
      el("div", { class: "params", text: paramsText(s.params) })
    );
    var rect = this.box.getBoundingClientRect();
    this.tip.style.left = (window.scrollX + rect.left + u.cursor.left + 60) + "px";
    this.tip.style.top = (window.scrollY + rect.top + top + 10) + "px";
    this.tip.hidden = false;
  };

  // -- the workers' timeline (canvas) -----------------------------------------------------------
  function Timeline(source) {
    this.source = source;
    this.canvas = document.getElementById("timeline");
    this.tip = document.getElementById("tooltip");
    this.data = null;
    var self = this;
    this.canvas.addEventListener("mousemove", function (e) { self.hover(e); });
    this.canvas.addEventListener("mouseleave", function () { self.tip.hidden = true; });
  }

  Timeline.prototype.load = function () {
    var self = this;
    return this.source.get("timeline", { last: 1000 }).then(function (t) { self.draw(t); });
  };

  Timeline.prototype.draw = function (t) {
    this.data = t;
    var util = document.getElementById("utilisation");
    util.replaceChildren.apply(util, t.workers.map(function (w) {
      return el("span", { class: "util", text: "worker " + w.worker + ": " + (100 * w.utilisation).toFixed(1) +
        " % busy (" + seconds(w.busy_seconds) + " of " + seconds(t.wall_seconds) + ")" });
    }));
    var rowH = 26, pad = 70, width = Math.max(320, this.canvas.parentNode.clientWidth - 2);
    var height = t.n_workers * rowH + 24;
    var ratio = window.devicePixelRatio || 1;
    this.canvas.width = width * ratio; this.canvas.height = height * ratio;
    this.canvas.style.width = width + "px"; this.canvas.style.height = height + "px";
    var ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    var visits = t.visits;
    var t0 = visits.length ? visits[0].start : 0;
    visits.forEach(function (v) { t0 = Math.min(t0, v.start); });
    var t1 = Math.max(t0 + 1e-3, visits.length ? visits[visits.length - 1].end : 1);
    visits.forEach(function (v) { t1 = Math.max(t1, v.end); });
    var scale = (width - pad - 8) / (t1 - t0);
    this.geometry = { pad: pad, rowH: rowH, t0: t0, scale: scale };
    ctx.font = "12px sans-serif";
    for (var w = 0; w < t.n_workers; w++) {
      ctx.fillStyle = "#f3e9e9";  // idle unless a bar covers it
      ctx.fillRect(pad, w * rowH + 2, width - pad - 8, rowH - 4);
      ctx.fillStyle = "#333";
      ctx.fillText("worker " + w, 4, w * rowH + rowH / 2 + 4);
    }
    visits.forEach(function (v) {
      var x = pad + (v.start - t0) * scale, y = v.worker * rowH + 2;
      var wpx = Math.max(1, (v.end - v.start) * scale);
      ctx.fillStyle = color(v.mst_id);
      ctx.fillRect(x, y, wpx, rowH - 4);
      if (v.hop) {
        ctx.fillStyle = "#111";
        ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x + 6, y); ctx.lineTo(x, y + 8); ctx.fill();
      }
    });
    ctx.fillStyle = "#555";
    var axisY = t.n_workers * rowH + 16;
    for (var i = 0; i <= 4; i++) {
      var at = t0 + (t1 - t0) * i / 4;
      var label = seconds(at);
      ctx.fillText(label, Math.min(pad + (at - t0) * scale, width - 50), axisY);
    }
  };

  Timeline.prototype.hover = function (e) {
    if (!this.data || !this.geometry) return;
    var g = this.geometry, rect = this.canvas.getBoundingClientRect();
    var x = e.clientX - rect.left, y = e.clientY - rect.top;
    var worker = Math.floor(y / g.rowH), at = g.t0 + (x - g.pad) / g.scale;
    var hit = null;
    this.data.visits.forEach(function (v) {
      if (v.worker === worker && v.start <= at && at <= v.end) hit = v;
    });
    if (!hit) { this.tip.hidden = true; return; }
    this.tip.replaceChildren(
      el("b", { text: "MST " + hit.mst_id + " on worker " + hit.worker }),
      el("div", { text: "epoch " + (hit.epoch + 1) + ", " + hit.steps + " steps, " + (hit.end - hit.start).toFixed(3) + " s" }),
      el("div", { text: hit.hop ? "its state hopped here for this visit" : "no hop: it was already here (or new)" })
    );
    this.tip.style.left = (window.scrollX + e.clientX + 12) + "px";
    this.tip.style.top = (window.scrollY + e.clientY + 12) + "px";
    this.tip.hidden = false;
  };

  // -- the MST table ------------------------------------------------------------------------------
  function Table(source, page) {
    this.source = source;
    this.page = page;
    this.space = page.run.space;
    this.params = sampled(this.space);
    this.state = { sort: "best", order: page.run.direction === "maximize" ? "desc" : "asc", offset: 0, limit: 25 };
    var self = this;
    document.getElementById("filter").addEventListener("input", function () { self.state.offset = 0; self.load(); });
    document.getElementById("status-filter").addEventListener("change", function () { self.state.offset = 0; self.load(); });
    document.getElementById("prev").addEventListener("click", function () {
      self.state.offset = Math.max(0, self.state.offset - self.state.limit); self.load();
    });
    document.getElementById("next").addEventListener("click", function () {
      if (self.state.offset + self.state.limit < self.total) { self.state.offset += self.state.limit; self.load(); }
    });
    this.header();
  }

  Table.prototype.columns = function () {
    var cols = [["mst_id", "MST"], ["status", "status"]];
    this.params.forEach(function (p) { cols.push(["param:" + p, p]); });
    return cols.concat([["epochs", "epochs"], ["last", "last " + this.page.run.metric],
                        ["best", "best " + this.page.run.metric], ["priority", "priority"], ["", "actions"]]);
  };

  Table.prototype.header = function () {
    var self = this, head = document.getElementById("mst-head");
    head.replaceChildren.apply(head, this.columns().map(function (c) {
      var th = el("th", { text: c[1] });
      if (c[0]) {
        th.className = "sortable" + (self.state.sort === c[0] ? " sorted-" + self.state.order : "");
        th.setAttribute("data-sort", c[0]);
        th.addEventListener("click", function () {
          if (self.state.sort === c[0]) self.state.order = self.state.order === "asc" ? "desc" : "asc";
          else { self.state.sort = c[0]; self.state.order = "asc"; }
          self.state.offset = 0; self.header(); self.load();
        });
      }
      return th;
    }));
  };

  Table.prototype.load = function () {
    var self = this;
    var query = { sort: this.state.sort, order: this.state.order, offset: this.state.offset,
                  limit: this.state.limit, q: document.getElementById("filter").value,
                  status: document.getElementById("status-filter").value };
    return this.source.get("msts", query).then(function (p) { self.draw(p); });
  };

  Table.prototype.draw = function (p) {
    var self = this, body = document.getElementById("mst-body");
    this.total = p.total;
    document.getElementById("page").textContent = p.total ?
      (p.offset + 1) + "–" + (p.offset + p.items.length) + " of " + p.total : "no MSTs match";
    var objectives = this.page.run.objectives || {};
    var names = Object.keys(objectives);
    document.getElementById("table-note").textContent = p.n_msts + " MSTs in the run" +
      (names.length > 1 ? "; \u25c6 on the Pareto front of " + names.map(function (k) {
        return k + " (" + (objectives[k] === "maximize" ? "max" : "min") + ")";
      }).join(", ") : "");
    body.replaceChildren.apply(body, p.items.map(function (m) {
      var id = el("td", { class: "num", text: String(m.mst_id) + (m.pareto ? " \u25c6" : "") });
      if (m.pareto) { id.title = "on the Pareto front"; id.setAttribute("data-pareto", "1"); }
      var cells = [id,
                   el("td", {}, [el("span", { class: "status " + m.status, text: m.status })])];
      self.params.forEach(function (k) { cells.push(el("td", { class: "num", text: fmt(m.params[k]) })); });
      cells.push(el("td", { class: "num", text: m.epochs_done + " / " + m.n_epochs }));
      cells.push(el("td", { class: "num", text: fmt(m.last) }));
      cells.push(el("td", { class: "num", text: fmt(m.best) }));
      cells.push(el("td", { class: "num", text: String(m.priority) }));
      cells.push(el("td", { class: "actions" }, self.page.live ? self.actions(m) : []));
      var row = el("tr", { "data-mst": String(m.mst_id) }, cells);
      if (m.error) row.title = m.error;
      return row;
    }));
  };

  Table.prototype.actions = function (m) {
    var self = this, buttons = [];
    function button(label, action, handler) {
      var b = el("button", { type: "button", class: "steer", "data-action": action, "data-mst": String(m.mst_id), text: label });
      b.addEventListener("click", handler);
      buttons.push(b);
    }
    if (m.status === "pending" || m.status === "running") {
      button("stop", "stop", function () { self.page.send("/msts/" + m.mst_id + "/stop", undefined, "stop MST " + m.mst_id); });
    }
    if (m.status === "stopped") {
      button("resume", "resume", function () { self.page.send("/msts/" + m.mst_id + "/resume", undefined, "resume MST " + m.mst_id); });
    }
    button("clone…", "clone", function () { self.page.editor.open("clone", m); });
    button("priority…", "priority", function () {
      var value = window.prompt("priority of MST " + m.mst_id + " (an integer; higher runs first)", String(m.priority));
      if (value === null) return;
      self.page.send("/msts/" + m.mst_id + "/priority", { priority: Number(value) }, "priority of MST " + m.mst_id);
    });
    return buttons;
  };

  // -- the clone / add form: one field per sampled parameter of the space -----------------------------
  function Editor(page) {
    this.page = page;
    this.dialog = document.getElementById("editor");
    var self = this;
    if (!this.dialog) return;
    document.getElementById("editor-cancel").addEventListener("click", function () { self.dialog.close(); });
    document.getElementById("editor-form").addEventListener("submit", function (e) { e.preventDefault(); self.submit(); });
  }

  Editor.prototype.open = function (kind, mst) {
    var space = this.page.run.space, fields = document.getElementById("editor-fields");
    this.kind = kind; this.mst = mst;
    document.getElementById("editor-title").textContent = kind === "clone" ?
      "Clone MST " + mst.mst_id + " with changes" : "Add an MST";
    document.getElementById("warm-row").hidden = kind !== "clone";
    document.getElementById("editor-error").textContent = "";
    document.getElementById("epochs").value = "";
    fields.replaceChildren.apply(fields, sampled(space).map(function (name) {
      var d = space[name], current = mst ? mst.params[name] : undefined, input;
      var values = d.values || (d.type === "grid" ? d.values : null);
      if (values) {
        input = el("select", { "data-param": name }, values.map(function (v, i) {
          var o = el("option", { value: String(i), text: fmt(v) });
          if (JSON.stringify(v) === JSON.stringify(current)) o.selected = true;
          return o;
        }));
      } else {
        input = el("input", { "data-param": name, type: "text", value: current === undefined ? "" : String(current),
                              placeholder: "low " + d.low + ", high " + d.high });
      }
      var hint = values ? "" : " (" + d.type + " " + d.low + " … " + d.high + ")";
      return el("label", { class: "field" }, [el("span", { text: name + hint }), input]);
    }));
    this.dialog.showModal();
  };

  Editor.prototype.values = function () {
    var space = this.page.run.space, out = {};
    document.querySelectorAll("#editor-fields [data-param]").forEach(function (input) {
      var name = input.getAttribute("data-param"), d = space[name];
      if (input.tagName === "SELECT") out[name] = d.values[Number(input.value)];
      else {
        var text = input.value.trim();
        out[name] = text === "" || isNaN(Number(text)) ? text : Number(text);  // the server checks it
      }
    });
    return out;
  };

  Editor.prototype.submit = function () {
    var self = this, values = this.values(), epochs = document.getElementById("epochs").value;
    var body, path;
    if (this.kind === "clone") {
      var changes = {};
      Object.keys(values).forEach(function (k) {
        if (JSON.stringify(values[k]) !== JSON.stringify(self.mst.params[k])) changes[k] = values[k];
      });
      body = { changes: changes, warm_start: document.getElementById("warm").checked };
      path = "/msts/" + this.mst.mst_id + "/clone";
    } else {
      body = { params: values };
      path = "/msts";
    }
    if (epochs) body.epochs = Number(epochs);
    this.page.send(path, body, this.kind === "clone" ? "clone MST " + this.mst.mst_id : "add MST").then(function () {
      self.dialog.close();
    }, function (e) {
      document.getElementById("editor-error").textContent = e.message;
    });
  };

  // -- events -------------------------------------------------------------------------------------
  function drawEvents(events) {
    var list = document.getElementById("events");
    var shown = events.slice(-25).reverse();
    list.replaceChildren.apply(list, shown.map(function (e) {
      var what = e.kind + (e.mst_id !== null ? " · MST " + e.mst_id : "");
      var detail = e.kind === "command" ? (e.detail.status + ": " + e.detail.message) :
        e.kind === "hopped" ? (e.detail.hop ? "state moved to worker " + e.detail.worker + " (" + bytes(e.detail.bytes) + ")" : "visit on worker " + e.detail.worker) :
        (Object.keys(e.detail || {}).length ? JSON.stringify(e.detail).slice(0, 160) : "");
      return el("li", {}, [el("time", { text: e.time.replace("T", " ").slice(0, 19) }), el("b", { text: what }), el("span", { text: detail })]);
    }));
  }

  // -- the run page -----------------------------------------------------------------------------------
  function runPage(page) {
    tokenBox();
    var source = new Source(page);
    var curves = new Curves(source), timeline = new Timeline(source), table = new Table(source, page);
    var lastEvent = 0, events = [];
    page.editor = new Editor(page);
    page.send = function (path, body, what) {
      if (!token()) {
        var message = "to steer runs, paste the token that `modelhopper dashboard` printed (top right)";
        window.alert(message);
        return Promise.reject(new Error(message));
      }
      return source.post(path, body).then(function (c) {
        flash(what + ": queued as command " + c.id + "; the run applies it at its next scheduling step");
        refresh();
        return c;
      }, function (e) { flash(what + " refused: " + e.message, true); throw e; });
    };
    var add = document.getElementById("add-button");
    if (add) add.addEventListener("click", function () { page.editor.open("add", null); });
    document.getElementById("metric").addEventListener("change", function () { curves.load(); });
    document.getElementById("top").addEventListener("change", function () { curves.load(); });

    function refresh() {
      var jobs = [
        source.get("resources").then(drawResources),
        curves.load(), timeline.load(), table.load(),
        source.get("events", { after_id: lastEvent, limit: 100, newest: true, skip_visits: true }).then(function (batch) {
          if (batch.length) { lastEvent = batch[batch.length - 1].id; events = events.concat(batch).slice(-100); }
          drawEvents(events);
        }),
      ];
      if (page.live) jobs.push(source.get("").then(function (run) {
        var badge = document.getElementById("run-status");
        badge.textContent = run.status; badge.className = "status " + run.status;
        page.run.status = run.status;
      }));
      return Promise.all(jobs).then(function () {
        document.body.setAttribute("data-loaded", "1");
      }, function (e) { flash("refresh failed: " + e.message, true); });
    }

    function loop() {
      refresh().then(function () {
        if (page.live && page.run.status === "running") window.setTimeout(loop, REFRESH_MS);
        else if (page.live) window.setTimeout(loop, 5 * REFRESH_MS);
      });
    }
    loop();
  }

  function flash(message, bad) {
    var box = document.getElementById("flash");
    if (!box) { box = el("div", { id: "flash" }); document.body.appendChild(box); }
    box.textContent = message;
    box.className = bad ? "bad" : "good";
    window.clearTimeout(flash.timer);
    flash.timer = window.setTimeout(function () { box.className = "hidden"; }, 6000);
  }

  window.ModelHopper = { runPage: runPage, tokenBox: tokenBox };
})();
