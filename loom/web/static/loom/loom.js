// loom web: the dashboard's own script (no build step, no inline scripts: CSP script-src 'self').
// htmx swaps live fragments in over SSE; this renders step graphs and sends mutations as JSON.
"use strict";

(function () {
  function renderGraphs() {
    if (!window.mermaid) return;
    var nodes = document.querySelectorAll("pre.mermaid:not([data-processed])");
    if (nodes.length) window.mermaid.run({ nodes: nodes }).catch(function () {});
  }

  async function post(url, body) {
    var response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    var data = {};
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
    return data;
  }

  function show(form, text, ok) {
    var out = form.querySelector(".result");
    out.textContent = text;
    out.className = "result " + (ok ? "ok" : "error");
  }

  function wireSignal() {
    var form = document.getElementById("signal-form");
    if (!form) return;
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      var id = form.dataset.workflowId;
      var name = form.elements.name.value.trim();
      var text = form.elements.payload.value.trim();
      var payload = null;
      if (text) {
        try { payload = JSON.parse(text); } catch (e) {
          show(form, "The payload is not valid JSON: " + e.message, false);
          return;
        }
      }
      try {
        await post("/api/workflows/" + encodeURIComponent(id) + "/signals/" +
          encodeURIComponent(name), payload);
        show(form, "Signal " + name + " sent.", true);
      } catch (e) { show(form, e.message, false); }
    });
  }

  function wireCancel() {
    var form = document.getElementById("cancel-form");
    if (!form) return;
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (!window.confirm("Cancel this workflow?")) return;
      var reason = form.elements.reason.value.trim();
      try {
        await post("/api/workflows/" + encodeURIComponent(form.dataset.workflowId) + "/cancel",
          reason ? { reason: reason } : {});
        show(form, "Cancellation requested.", true);
      } catch (e) { show(form, e.message, false); }
    });
  }

  function wireAction(formId, action, done, body) {
    var form = document.getElementById(formId);
    if (!form) return;
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      try {
        var data = await post("/api/workflows/" + encodeURIComponent(form.dataset.workflowId) +
          "/" + action, body(form));
        show(form, done(data), true);
      } catch (e) { show(form, e.message, false); }
    });
  }

  function wireRecovery() {
    wireAction("resume-form", "resume", function (data) {
      return data.resumed ? "Resumed." : "It was not suspended; nothing to resume.";
    }, function () { return {}; });
    wireAction("suspend-form", "suspend", function (data) {
      return data.suspended ? "Suspended." : "It was suspended already.";
    }, function (form) {
      var reason = form.elements.reason.value.trim();
      return reason ? { reason: reason } : {};
    });
    wireAction("fork-form", "fork", function (data) {
      return "Forked as " + data.workflow_id + ".";
    }, function (form) {
      var body = {};
      var at = form.elements.at.value.trim();
      var id = form.elements.workflow_id.value.trim();
      if (at) body.at = parseInt(at, 10);
      if (id) body.workflow_id = id;
      return body;
    });
  }

  // Bulk cancel: the selection survives the live re-rendering of the rows.
  var selected = new Set();
  function syncSelection() {
    document.querySelectorAll("#workflow-rows input.select").forEach(function (box) {
      box.checked = selected.has(box.value);
    });
    var button = document.getElementById("bulk-cancel");
    if (button) {
      button.disabled = selected.size === 0;
      button.textContent = selected.size ? "Cancel selected (" + selected.size + ")" : "Cancel selected";
    }
  }
  function wireBulk() {
    var rows = document.getElementById("workflow-rows");
    if (!rows) return;
    rows.addEventListener("change", function (event) {
      var box = event.target;
      if (!box.classList || !box.classList.contains("select")) return;
      if (box.checked) selected.add(box.value); else selected.delete(box.value);
      syncSelection();
    });
    var all = document.getElementById("select-all");
    all.addEventListener("change", function () {
      document.querySelectorAll("#workflow-rows input.select").forEach(function (box) {
        if (all.checked) selected.add(box.value); else selected.delete(box.value);
      });
      syncSelection();
    });
    document.getElementById("bulk-cancel").addEventListener("click", async function () {
      var ids = Array.from(selected);
      if (!ids.length || !window.confirm("Cancel " + ids.length + " workflow(s)?")) return;
      var out = document.getElementById("bulk-result");
      try {
        var data = await post("/api/workflows/cancel", { workflow_ids: ids });
        var done = Object.values(data.results).filter(function (r) { return r.cancelled; }).length;
        out.textContent = done + " of " + ids.length + " cancellation(s) requested.";
        selected.clear();
        all.checked = false;
        syncSelection();
      } catch (e) { out.textContent = e.message; }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (window.mermaid) {
      window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
    }
    renderGraphs();
    wireSignal();
    wireCancel();
    wireRecovery();
    wireBulk();
  });
  document.addEventListener("htmx:afterSettle", function () {
    renderGraphs();
    syncSelection();
  });
})();
