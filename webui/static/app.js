// Shared by every page: translations, CSRF for fetch, theme toggle, confirmations, copy.
"use strict";
window.keymux = (function () {
  var strings = {};
  try { strings = JSON.parse(document.getElementById("i18n").textContent); } catch (e) { strings = {}; }

  function t(msg, values) {
    var text = strings[msg] || msg;
    if (values) Object.keys(values).forEach(function (k) { text = text.split("%(" + k + ")s").join(values[k]); });
    return text;
  }

  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function post(url) {
    return fetch(url, { method: "POST", headers: { "X-CSRF-Token": csrf(), "Accept": "application/json" },
                        credentials: "same-origin" });
  }

  function effectiveTheme() {
    var chosen = document.documentElement.dataset.theme;
    if (chosen) return chosen;
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c != null) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }

  // One time zone on every page: local time shown, UTC on hover.
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function utc(seconds) {
    var d = new Date(seconds * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + " UTC";
  }
  function local(seconds) {
    var d = new Date(seconds * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function localTimes(root) {
    (root || document).querySelectorAll("time[data-local][datetime]").forEach(function (node) {
      var ms = Date.parse(node.getAttribute("datetime"));
      if (isNaN(ms)) return;
      node.textContent = local(ms / 1000);
      node.title = utc(ms / 1000);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes();
    var toggle = document.getElementById("theme-toggle");
    if (toggle) {
      var label = function () {
        toggle.title = effectiveTheme() === "dark" ? t("Light theme") : t("Dark theme");
        toggle.setAttribute("aria-label", toggle.title);
      };
      label();
      toggle.addEventListener("click", function () {
        var next = effectiveTheme() === "dark" ? "light" : "dark";
        document.documentElement.dataset.theme = next;
        try { localStorage.setItem("keymux-theme", next); } catch (e) { /* not remembered */ }
        label();
        document.dispatchEvent(new CustomEvent("keymux:theme"));
      });
    }
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.dataset.confirm || t("Are you sure?"))) ev.preventDefault();
      });
    });
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var target = document.getElementById(button.dataset.copy);
        if (!target) return;
        var text = target.value !== undefined ? target.value : target.textContent;
        var done = function () { button.textContent = t("Copied"); setTimeout(function () { button.textContent = t("Copy"); }, 1500); };
        if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done);
        else { target.select && target.select(); document.execCommand("copy"); done(); }
      });
    });
    document.querySelectorAll("button[data-expand]").forEach(function (button) {
      button.addEventListener("click", function () {
        var row = document.getElementById(button.dataset.expand);
        var open = row.hidden;
        row.hidden = !open;
        button.setAttribute("aria-expanded", String(open));
        button.textContent = open ? t("Hide attempts") : t("Show attempts");
      });
    });
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.requestSubmit(); });
    });
  });

  return { t: t, csrf: csrf, post: post, el: el, theme: effectiveTheme, utc: utc, local: local,
           localTimes: localTimes };
})();
