// The playground: submit through the REST API, stream tokens over server-sent events,
// keep the history table current. No inline script (the CSP forbids it).
(function () {
  "use strict";
  const form = document.getElementById("playground-form");
  if (!form) return;
  const output = document.getElementById("pg-output");
  const statusEl = document.getElementById("pg-status");
  const errorEl = document.getElementById("pg-error");
  const runBtn = document.getElementById("pg-run");
  const cancelBtn = document.getElementById("pg-cancel");
  const history = document.querySelector("#pg-history tbody");
  let current = null; // {id, source}

  function params() {
    const data = new FormData(form);
    const body = { model: data.get("model"), prompt: data.get("prompt") };
    for (const name of ["max_new_tokens", "top_k", "seed"]) {
      const v = data.get(name);
      if (v !== null && v !== "") body[name] = parseInt(v, 10);
    }
    for (const name of ["temperature", "top_p"]) {
      const v = data.get(name);
      if (v !== null && v !== "") body[name] = parseFloat(v);
    }
    const stop = (data.get("stop") || "").split(",").map((s) => s.trim()).filter(Boolean);
    if (stop.length) body.stop = stop;
    body.logprobs = data.get("logprobs") === "on";
    return body;
  }

  function setBusy(busy) {
    runBtn.disabled = busy;
    cancelBtn.disabled = !busy;
  }

  function fmt(v, digits, unit) {
    return v === null || v === undefined ? "" : v.toFixed(digits) + (unit || "");
  }

  function historyRow(job) {
    let row = history.querySelector('tr[data-job="' + job.id + '"]');
    if (!row) {
      const empty = history.querySelector("tr.empty");
      if (empty) empty.remove();
      row = document.createElement("tr");
      row.dataset.job = job.id;
      for (let i = 0; i < 8; i++) row.appendChild(document.createElement("td"));
      history.prepend(row);
    }
    // Rows of jobs still queued or running are refreshed until they end (refreshActive).
    row.dataset.active = job.state === "queued" || job.state === "running" ? "1" : "0";
    const cells = row.children;
    cells[0].textContent = job.created_at.replace("T", " ").slice(0, 19);
    cells[1].textContent = job.size;
    cells[2].textContent = (job.prompts[0] || "").slice(0, 60);
    const badge = document.createElement("span");
    badge.className = "badge" + (job.state === "succeeded" ? " ok" : job.state === "failed" ? " bad" : "");
    badge.textContent = job.state;
    badge.title = job.error || "";
    cells[3].replaceChildren(badge);
    cells[4].textContent = fmt(job.queue_wait, 2, " s");
    cells[5].textContent = fmt(job.time_to_first_token, 2, " s");
    cells[6].textContent = fmt(job.decode_tokens_per_second, 1);
    cells[7].textContent = job.completion_tokens;
  }

  function follow(job) {
    const source = new EventSource(job.urls.stream);
    current = { id: job.id, source: source };
    source.addEventListener("state", () => { statusEl.textContent = "Running…"; });
    source.addEventListener("reset", () => { output.textContent = form.prompt.value; });
    source.addEventListener("token", (e) => {
      const data = JSON.parse(e.data);
      if (data.index === 0) output.textContent += data.text;
    });
    source.addEventListener("end", (e) => {
      const done = JSON.parse(e.data);
      source.close();
      current = null;
      setBusy(false);
      statusEl.textContent = "Done: " + done.state;
      if (done.error) errorEl.textContent = done.error;
      historyRow(done);
      refreshRow(done.id); // the final timings and token count, as the API has them
    });
    source.addEventListener("error", (e) => {
      if (e.data) {
        errorEl.textContent = JSON.parse(e.data).error.message;
        source.close();
        setBusy(false);
      }
      // Otherwise the browser reconnects by itself with Last-Event-ID.
    });
  }

  async function api(url, options) {
    const response = await fetch(url, Object.assign({
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": form.dataset.csrf },
    }, options));
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const err = (body && body.error) || {};
      let message = err.message || "The portal answered HTTP " + response.status + ".";
      if (err.fields) message += " " + JSON.stringify(err.fields);
      throw new Error(message);
    }
    return body;
  }

  async function refreshRow(id) {
    try {
      historyRow(await api(form.dataset.api + "/" + id, { method: "GET" }));
    } catch (err) {
      // A job that cannot be read now is tried again at the next tick.
    }
  }

  // Jobs submitted from anywhere (this page, the API, a notebook) end while the page is
  // open: their rows follow without a reload.
  function refreshActive() {
    history.querySelectorAll('tr[data-active="1"]').forEach((row) => {
      if (!current || current.id !== row.dataset.job) refreshRow(row.dataset.job);
    });
  }
  setInterval(refreshActive, 2000);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorEl.textContent = "";
    output.textContent = form.prompt.value;
    statusEl.textContent = "Queued…";
    setBusy(true);
    try {
      const job = await api(form.dataset.api, { method: "POST", body: JSON.stringify(params()) });
      historyRow(job);
      follow(job);
    } catch (err) {
      errorEl.textContent = err.message;
      statusEl.textContent = "";
      setBusy(false);
    }
  });

  cancelBtn.addEventListener("click", async () => {
    if (!current) return;
    try {
      await api(form.dataset.api + "/" + current.id + "/cancel", { method: "POST" });
      statusEl.textContent = "Cancelling…";
    } catch (err) {
      errorEl.textContent = err.message;
    }
  });
})();
