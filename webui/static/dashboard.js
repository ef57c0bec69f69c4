// The dashboard: renders /api/stats every 2 s, charts /api/history for the selected keys.
"use strict";
(function () {
  var k = window.keymux, t = k.t, el = k.el;
  var POLL_MS = 2000, HISTORY_MS = 15000, LOCALE = document.documentElement.lang || undefined;
  var selected = loadSelection(), range = "hour", charts = {}, lastData = null, historyTimer = null;

  function loadSelection() {
    try { var s = JSON.parse(localStorage.getItem("keymux-chart-keys")); return Array.isArray(s) ? s : null; }
    catch (e) { return null; }
  }
  function saveSelection() {
    try { localStorage.setItem("keymux-chart-keys", JSON.stringify(selected)); } catch (e) { /* ignore */ }
  }

  function fmtInt(n) { return n == null ? "–" : Number(n).toLocaleString(LOCALE); }
  function fmtPct(x) { return x == null ? "–" : (x * 100).toFixed(x >= 0.9995 || x === 0 ? 0 : 1) + "%"; }
  function fmtSec(s) { return s == null ? "–" : s < 1 ? Math.round(s * 1000) + " ms" : s.toFixed(2) + " s"; }
  function usedOf(used, limit) {
    if (used == null && limit == null) return "–";
    return (used == null ? "–" : fmtInt(used)) + (limit == null ? "" : " / " + fmtInt(limit));
  }

  var CLASSES = { rate_limited: "rate limited", quota: "quota", auth: "auth", server: "server", client_error: "client error" };

  var HELD = { learned_budget: "held back: the upstream says none left", rpm: "held back: rpm limit",
               tpm: "held back: tpm limit", in_flight: "held back: max in flight",
               budget: "held back: budget reached" };

  function stateCell(r) {
    var label = t(r.state === "over_budget" ? "over budget" : r.state);
    if ((r.state === "cooling" || r.state === "dead") && r.cooldown_s > 0) label += " · " + t("%(s)s s left", { s: Math.ceil(r.cooldown_s) });
    var children = [el("span", { className: "badge state-" + r.state, text: label })];
    var notes = [];
    if (r.cooldown_reason && CLASSES[r.cooldown_reason]) notes.push(t(CLASSES[r.cooldown_reason]));
    if (!r.loaded && r.enabled) notes.push(t("not loaded"));
    // usable, yet held back by a limit (a learned upstream budget, rpm, tpm, in-flight)
    var held = (r.held_back || [])[0];
    if (r.state === "ok" && held && HELD[held.reason] && held.reason !== "budget") {
      notes.push(t(HELD[held.reason]) + (held.seconds_left > 0 ? " · " + t("%(s)s s left", { s: Math.ceil(held.seconds_left) }) : ""));
    }
    if (notes.length) children.push(el("span", { className: "muted small block", text: notes.join(", ") }));
    children.push(window.keymuxSpend.budgetNote(r));  // a key at its budget, in any state
    // a model-scoped cooldown: the key still serves every other model (and counts as usable)
    var models = Object.keys(r.cooling_models || {});
    var serving = r.state === "ok" ? " · " + t("serving others") : "";
    models.forEach(function (m) {
      var left = t("%(s)s s left", { s: Math.ceil(r.cooling_models[m]) });
      children.push(el("span", { className: "cooling-model small block", title: m + " · " + left,
                                 text: t("cooling for %(model)s", { model: m }) + serving + " · " + left }));
    });
    return children;
  }

  function failuresCell(r) {
    if (!r.failures_by_class) return [document.createTextNode(fmtInt(r.failures))];
    var names = CLASSES;
    var chips = Object.keys(names).filter(function (c) { return r.failures_by_class[c] > 0; })
      .map(function (c) { return el("span", { className: "chip chip-" + c, text: t(names[c]) + " " + r.failures_by_class[c] }); });
    return chips.length ? chips : [document.createTextNode("0")];
  }

  function td(label, children, cls) {
    var cell = el("td", { "data-label": label, className: cls || "" }, children);
    return cell;
  }

  function row(r) {
    var box = el("input", { type: "checkbox", "aria-label": t("Chart") + " " + r.name, value: r.name });
    box.checked = selected.indexOf(r.name) >= 0;
    box.addEventListener("change", function () {
      selected = selected.filter(function (n) { return n !== r.name; });
      if (box.checked) selected.push(r.name);
      saveSelection();
      loadHistory();
    });
    var keyText = r.key || (r.reference ? r.reference : "");
    var reset = el("button", { type: "button", className: "small" + (r.state === "cooling" || r.state === "dead" ? " warn" : ""),
                               text: t("Reset cooldown") });
    if (!r.loaded || r.state === "unknown" || r.state === "disabled") reset.disabled = true;
    reset.addEventListener("click", function () { resetKey(r.name, reset); });
    var tokens = r.today.tokens_in + r.today.tokens_out;
    var tr = el("tr", { "data-key": r.name, "data-state": r.state,
                        "data-cooling-models": String(Object.keys(r.cooling_models || {}).length),
                        "data-budget": r.budget_hold ? "held" : "" }, [
      td(t("Chart"), [box], "narrow"),
      td(t("Name"), [el("div", {}, [el("strong", { text: r.name }),
                                    el("span", { className: "muted small block", text: r.provider + " · " + keyText })])], "name"),
      td(t("State"), stateCell(r), "state"),
      td(t("In flight"), [fmtInt(r.in_flight)], "num"),
      td(t("RPM / TPM"), [el("div", {}, [el("span", { className: "block", text: t("rpm") + " " + usedOf(r.rpm_used, r.rpm_limit) }),
                                         el("span", { className: "muted small block", text: t("tpm") + " " + usedOf(r.tpm_used, r.tpm_limit) })])], "num"),
      td(t("Requests"), [fmtInt(r.requests)], "num"),
      td(t("Success"), [fmtPct(r.success_rate)], "num"),
      td(t("Failures"), [el("div", { className: "chips" }, failuresCell(r))], "failures"),
      td(t("Latency"), [el("div", {}, [el("span", { className: "block", text: fmtSec(r.avg_latency_s) }),
                                       el("span", { className: "muted small block", text: "p95 " + fmtSec(r.p95_latency_s) })])], "num"),
      td(t("Tokens today"), [fmtInt(tokens)], "num"),
      td(t("Spend"), window.keymuxSpend.cell(r), "num spend"),
      td(t("Actions"), [reset], "actions"),
    ]);
    return tr;
  }

  function render(data) {
    lastData = data;
    if (selected === null) selected = data.keys.slice(0, 4).map(function (r) { return r.name; });
    var body = document.getElementById("keys-body");
    var rows = data.keys.map(row);
    if (!rows.length) rows = [el("tr", {}, [el("td", { colspan: "12", className: "muted", text: t("No keys in keys.yaml yet.") })])];
    body.replaceChildren.apply(body, rows);
    var tot = data.totals;
    setText("t-usable", tot.states.ok + " / " + tot.keys);
    setText("t-partial", tot.partial ? t("%(n)s cooling for some models", { n: tot.partial }) : "");
    setText("t-cooling", tot.states.cooling + " / " + tot.states.dead);
    setText("t-inflight", fmtInt(tot.in_flight));
    setText("t-requests", fmtInt(tot.requests));
    setText("t-deleted", tot.deleted_keys && tot.deleted_keys.keys
      ? t("%(n)s from %(k)s deleted keys", { n: fmtInt(tot.deleted_keys.requests), k: tot.deleted_keys.keys }) : "");
    setText("t-success", fmtPct(tot.success_rate));
    setText("t-client-success", fmtPct(tot.client_success_rate));
    setText("t-client-requests", t("%(n)s client requests, last 24 h", { n: fmtInt(tot.client_requests) }));
    setText("t-tokens", fmtInt(tot.tokens_today));
    window.keymuxSpend.render(data.spend);
    banner("gateway-banner", data.gateway.reachable ? null
      : t("Cannot reach the gateway: showing the keys from keys.yaml, live state unknown.") + " (" + data.gateway.error + ")");
    banner("reload-banner", data.gateway.reload_error ? t("The gateway rejected the last reload:") + " " + data.gateway.reload_error : null);
    var store = data.gateway.store_error;
    banner("store-banner", store ? t("The gateway cannot write its state store (request log, usage); rows kept in memory: %(pending)s, dropped: %(dropped)s.",
      { pending: store.pending_rows, dropped: store.dropped_rows }) + " " + store.error : null);
    var w = data.gateway.worker;  // keymux run --workers N (docs/scaling.md)
    banner("worker-banner", w && w.of > 1 ? t("Live figures from worker %(i)s of %(n)s (pid %(pid)s): each refresh reaches one worker; without shared state (Redis) each keeps its own counters.",
      { i: w.index, n: w.of, pid: w.pid }) : null);
    banner("config-banner", data.config.error ? t("keys.yaml does not validate; the gateway keeps its previous config:") + " " + data.config.error : null);
    var updated = document.getElementById("updated");
    if (updated) {
      updated.textContent = t("updated %(time)s", { time: new Date(data.now * 1000).toLocaleTimeString(LOCALE) });
      updated.title = k.utc(data.now);
    }
  }

  function setText(id, text) { var n = document.getElementById(id); if (n) n.textContent = text; }
  function banner(id, text) {
    var n = document.getElementById(id);
    if (!n) return;
    n.hidden = !text;
    n.textContent = text || "";
  }

  function poll() {
    fetch("/api/stats", { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location = "/login?next=/"; throw new Error("signed out"); }
        return r.json();
      })
      .then(render)
      .catch(function () { if (!lastData || lastData.gateway.reachable) banner("gateway-banner", t("Lost contact with the UI server; retrying.")); })
      .finally(function () { setTimeout(poll, POLL_MS); });
  }

  function resetKey(name, button) {
    button.disabled = true;
    button.textContent = t("Resetting…");
    k.post("/api/keys/" + encodeURIComponent(name) + "/reset")
      .then(function (r) { return r.json(); })
      .then(function (body) { toast(body.message, body.ok ? "success" : "error"); })
      .catch(function () { toast(t("Lost contact with the UI server; retrying."), "error"); })
      .finally(function () { button.disabled = false; button.textContent = t("Reset cooldown"); });
  }

  function toast(text, kind) {
    var n = el("div", { className: "banner toast " + kind, role: "status", text: text });
    document.querySelector("main").prepend(n);
    setTimeout(function () { n.remove(); }, 5000);
  }

  // -- charts

  var PALETTE = ["#4f6df5", "#e8590c", "#2f9e44", "#ae3ec9", "#1098ad", "#d6336c", "#f59f00", "#5c7cfa"];

  function chartColors() {
    var css = getComputedStyle(document.documentElement);
    return { fg: css.getPropertyValue("--muted").trim() || "#666", grid: css.getPropertyValue("--line").trim() || "#ddd" };
  }

  function hhmm(ms) { return new Date(ms).toLocaleTimeString(LOCALE, { hour: "2-digit", minute: "2-digit" }); }

  // A minute with data between empty ones (latency is null where nothing was sent) has no
  // line to draw: give it a dot, so the first minutes of traffic show.
  function isolated(ctx) {
    var d = ctx.dataset && ctx.dataset.data, i = ctx.dataIndex;
    if (!d || !d[i] || d[i].y == null) return 0;
    var prev = i > 0 ? d[i - 1].y : null, next = i + 1 < d.length ? d[i + 1].y : null;
    return prev == null && next == null ? 3 : 0;
  }

  function makeChart(id, seriesName, data) {
    var c = chartColors();
    var datasets = Object.keys(data.series).map(function (name, i) {
      var color = PALETTE[i % PALETTE.length];
      return {
        label: name === "*" ? t("all keys") : name,
        data: data.series[name][seriesName].map(function (v, j) { return { x: data.t[j] * 1000, y: v }; }),
        borderColor: color, backgroundColor: color, borderWidth: 2, pointRadius: isolated, tension: 0.25, spanGaps: true,
      };
    });
    var axis = function (extra) {
      return Object.assign({ ticks: { color: c.fg }, grid: { color: c.grid } }, extra);
    };
    var x = axis({ type: "linear", min: data.t[0] * 1000, max: data.t[data.t.length - 1] * 1000 });
    x.ticks = { color: c.fg, maxTicksLimit: 6, callback: hhmm };
    var y = axis({ beginAtZero: true });
    y.ticks.maxTicksLimit = 5;
    var config = {
      type: "line",
      data: { datasets: datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: false },
        scales: { x: x, y: y },
        plugins: {
          legend: { labels: { color: c.fg, boxWidth: 12 } },
          tooltip: { callbacks: { title: function (items) {
            return items.length ? new Date(items[0].parsed.x).toLocaleString(LOCALE) + " (" + k.utc(items[0].parsed.x / 1000) + ")" : "";
          } } },
        },
      },
    };
    if (charts[id]) charts[id].destroy();
    charts[id] = new window.Chart(document.getElementById(id), config);
  }

  function loadHistory() {
    clearTimeout(historyTimer);
    historyTimer = setTimeout(loadHistory, HISTORY_MS);
    if (!window.Chart) return;
    var note = document.getElementById("chart-note");
    if (!selected || !selected.length) { note.textContent = t("Select keys in the table to chart them."); }
    var query = (selected || []).map(function (n) { return "key=" + encodeURIComponent(n); }).join("&");
    fetch("/api/history?range=" + range + (query ? "&" + query : ""), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        var empty = Object.keys(data.series).every(function (n) { return data.series[n].rpm.every(function (v) { return !v; }); });
        note.dataset.empty = String(empty);
        if (selected && selected.length) note.textContent = empty ? t("No data yet for the selected keys.") : "";
        makeChart("chart-rpm", "rpm", data);
        makeChart("chart-latency", "latency", data);
        makeChart("chart-tokens", "tokens", data);
      })
      .catch(function () { /* the stats poll reports lost contact */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    render(JSON.parse(document.getElementById("initial").textContent));
    setTimeout(poll, POLL_MS);
    document.querySelectorAll("[data-range]").forEach(function (b) {
      b.addEventListener("click", function () {
        range = b.dataset.range;
        document.querySelectorAll("[data-range]").forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
        loadHistory();
      });
    });
    loadHistory();
    document.addEventListener("keymux:theme", loadHistory);
  });
})();
