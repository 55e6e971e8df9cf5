// The evaluation page's progress bar: polls the status endpoint while the evaluation runs,
// and reloads the page (for its results) once it stops.
(function () {
  "use strict";
  var root = document.querySelector("[data-eval-status]");
  if (!root || root.getAttribute("data-state") !== "running") return;
  var url = root.getAttribute("data-eval-status");
  var bar = root.querySelector("progress");
  var text = root.querySelector("[data-eval-text]");
  var note = root.querySelector("[data-eval-note]");
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (!s) { setTimeout(poll, 5000); return; }
        bar.value = s.items_done;
        bar.max = s.items_total;
        text.textContent = s.items_done + " of " + s.items_total + " items scored";
        if (note) note.textContent = s.note || "";
        if (s.state !== "running") { window.location.reload(); return; }
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 1000);
})();
