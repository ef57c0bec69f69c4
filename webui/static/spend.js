// Spend on the dashboard: totals today and this month, tables by key and client (redrawn on
// every stats poll), each key's spend and budget hold, and the chart of the last 30 days.
"use strict";
(function () {
  var k = window.keymux, t = k.t, el = k.el;
  var LOCALE = document.documentElement.lang || undefined;
  var by = "provider", chart = null, timer = null, CHART_MS = 15000;
  var PALETTE = ["#4f6df5", "#e8590c", "#2f9e44", "#ae3ec9", "#1098ad", "#d6336c", "#f59f00", "#5c7cfa", "#868e96"];

  // $12.34, $0.46; below a dime three significant digits ($0.0123); "–" for none (webui/spend.py money)
  function money(usd) {
    if (usd == null) return "–";
    if (usd >= 1) return "$" + usd.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    if (usd <= 0) return "$0.00";
    if (usd < 1e-6) return "<$0.000001";
    var decimals = usd >= 0.1 ? 2 : Math.min(8, 2 - Math.floor(Math.log10(usd)));
    var text = usd.toFixed(decimals).replace(/0+$/, "");
    return "$" + (text.split(".")[1].length < 2 ? usd.toFixed(2) : text);
  }

  // An entry's spend: "unknown" (never $0) when none of its requests had a known price.
  function amount(e) {
    if (e && e.usd == null && e.requests) return el("span", { className: "unknown", text: t("unknown"), title: t("unknown price") });
    var node = el("span", { text: money(e ? e.usd : 0) });
    if (e && e.unknown) node.title = t("unknown-priced requests: %(n)s", { n: e.unknown });
    return node;
  }

  function left(s) {
    if (s < 120) return t("%(s)s s left", { s: Math.ceil(s) });
    if (s < 7200) return t("%(n)s min left", { n: Math.ceil(s / 60) });
    if (s < 172800) return t("%(n)s h left", { n: Math.ceil(s / 3600) });
    return t("%(n)s d left", { n: Math.ceil(s / 86400) });
  }

  // A key held back by its budget: "held back: budget reached · 12 d left" (any key state).
  function budgetNote(r) {
    var h = r.budget_hold;
    if (!h) return null;
    var text = t("held back: budget reached") + (h.seconds_left > 0 ? " · " + left(h.seconds_left) : "");
    return el("span", { className: "budget-hold small block", text: text, title: h.detail || "" });
  }

  // The key row's cell: today's spend, this month's below it.
  function cell(r) {
    return [el("div", {}, [el("span", { className: "block" }, [amount(r.spend_today)]),
                           el("span", { className: "muted small block" }, [t("month") + " ", amount(r.spend_month)])])];
  }

  function clientName(name) { return name === "-" ? t("no client (open gateway, or no valid token)") : name; }

  function table(id, rows, label, nameOf) {
    var body = document.querySelector("#" + id + " tbody");
    if (!body) return;
    var trs = rows.map(function (r) {
      return el("tr", { "data-name": r.name }, [
        el("td", { "data-label": label, text: nameOf(r.name) }),
        el("td", { className: "num", "data-label": t("Today") }, [amount(r.today)]),
        el("td", { className: "num", "data-label": t("This month") }, [amount(r.month)]),
        el("td", { className: "num", "data-label": t("Requests this month"), text: Number(r.month.requests).toLocaleString(LOCALE) }),
      ]);
    });
    if (!trs.length) trs = [el("tr", {}, [el("td", { colspan: "4", className: "muted", text: t("No spend recorded yet.") })])];
    body.replaceChildren.apply(body, trs);
  }

  function total(id, e) {
    var value = document.getElementById(id), note = document.getElementById(id + "-unknown");
    if (!value) return;
    value.replaceChildren(amount(e));
    note.textContent = e.unknown ? t("unknown-priced requests: %(n)s", { n: e.unknown }) : "";
  }

  function render(s) {
    if (!s) return;
    total("s-today", s.today.total);
    total("s-month", s.this_month.total);
    var period = document.getElementById("spend-period");
    if (period) period.textContent = t("day %(day)s, month %(month)s (days start at %(reset)s, %(tz)s)",
      { day: s.day, month: s.month, reset: s.daily_reset, tz: s.timezone });
    table("spend-keys", s.keys, t("Key"), function (n) { return n; });
    table("spend-clients", s.clients, t("Client"), clientName);
  }

  function colors() {
    var css = getComputedStyle(document.documentElement);
    return { fg: css.getPropertyValue("--muted").trim() || "#666", grid: css.getPropertyValue("--line").trim() || "#ddd" };
  }

  function draw(data) {
    var c = colors();
    var note = document.getElementById("spend-chart-note");
    var unknown = data.unknown.reduce(function (a, b) { return a + b; }, 0);
    var notes = [];
    if (!data.total) notes.push(t("No spend in the last 30 days."));
    if (unknown) notes.push(t("%(n)s requests of unknown price are not in the chart.", { n: unknown }));
    note.textContent = notes.join(" ");
    note.dataset.empty = String(!data.total);
    var config = {
      type: "bar",
      data: {
        labels: data.days.map(function (d) { return d.slice(5); }),
        datasets: data.series.map(function (s, i) {
          var color = PALETTE[Math.min(i, PALETTE.length - 1)];
          return { label: s.name === "other" ? t("other") : s.name, data: s.usd, backgroundColor: color, borderWidth: 0, maxBarThickness: 28 };
        }),
      },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: {
          x: { stacked: true, ticks: { color: c.fg, maxRotation: 0, autoSkipPadding: 8 }, grid: { display: false } },
          y: { stacked: true, beginAtZero: true, ticks: { color: c.fg, maxTicksLimit: 5, callback: money }, grid: { color: c.grid } },
        },
        plugins: {
          legend: { labels: { color: c.fg, boxWidth: 12 } },
          tooltip: { callbacks: {
            title: function (items) { return items.length ? data.days[items[0].dataIndex] : ""; },
            label: function (item) { return item.dataset.label + ": " + money(item.parsed.y); },
          } },
        },
      },
    };
    if (chart) chart.destroy();
    chart = new window.Chart(document.getElementById("chart-spend"), config);
  }

  function load() {
    clearTimeout(timer);
    timer = setTimeout(load, CHART_MS);
    if (!window.Chart || !document.getElementById("chart-spend")) return;
    fetch("/api/spend/daily?by=" + by, { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(draw)
      .catch(function () { /* the stats poll reports lost contact */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-spend-by]").forEach(function (b) {
      b.addEventListener("click", function () {
        by = b.dataset.spendBy;
        document.querySelectorAll("[data-spend-by]").forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
        load();
      });
    });
    load();
    document.addEventListener("keymux:theme", load);
  });

  window.keymuxSpend = { money: money, render: render, cell: cell, budgetNote: budgetNote };
})();
