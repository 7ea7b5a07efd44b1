// The dashboard: plain JS over the same /v1 API the openai client uses; the key stays in this tab.
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
let key = sessionStorage.getItem("tunekit-key") || "";
let jobs = [];
let selected = null;
let timer = null;

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${key}`, ...(options.headers || {}) };
  let body = options.body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const response = await fetch(`/v1${path}`, { method: options.method || "GET", headers, body });
  if (!response.ok) {
    let detail = null;
    try { detail = await response.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return options.raw ? response.text() : response.json();
}

// Every row of a paged list (`{data, has_more}`, next page `after=<last id>`), as the API pages them.
async function every(path) {
  const rows = [];
  for (let after = ""; ;) {
    const page = await api(`${path}${path.includes("?") ? "&" : "?"}limit=1000${after ? `&after=${after}` : ""}`);
    rows.push(...page.data);
    if (!page.has_more || !page.data.length) return rows;
    after = page.data[page.data.length - 1].id;
  }
}

function text(el, value) { el.textContent = value == null ? "" : String(value); }
function when(seconds) { return seconds ? new Date(seconds * 1000).toLocaleString() : ""; }

// Sign-in: a key is good when the models list answers.
async function signIn(candidate) {
  key = candidate;
  try {
    await loadModels();
  } catch (e) {
    key = "";
    sessionStorage.removeItem("tunekit-key");
    text($("signin-error"), e.status === 401 ? "That key is not valid (or was revoked)." : e.message);
    return;
  }
  sessionStorage.setItem("tunekit-key", key);
  text($("signin-error"), "");
  $("signin").hidden = true;
  $("main").hidden = false;
  $("signout").hidden = false;
  text($("who"), `signed in with key …${key.slice(-4)}`);
  await refreshJobs();
  timer = setInterval(tick, 2000);
}

function signOut() {
  key = "";
  sessionStorage.removeItem("tunekit-key");
  clearInterval(timer);
  location.reload();
}

async function loadModels() {
  const models = (await api("/models")).data;
  const bases = models.filter((m) => !m.id.startsWith("ft:"));
  const tuned = models.filter((m) => m.id.startsWith("ft:"));
  fill($("base-model"), bases.map((m) => m.id));
  fill($("tuned-model"), tuned.map((m) => m.id));
}

function fill(select, values) {
  const keep = select.value;
  select.replaceChildren(...values.map((v) => new Option(v, v)));
  if (values.includes(keep)) select.value = keep;
}

async function refreshJobs() {
  jobs = await every("/fine_tuning/jobs");
  const rows = jobs.map((job) => {
    const tr = document.createElement("tr");
    tr.dataset.id = job.id;
    if (selected === job.id) tr.className = "selected";
    for (const value of [job.id, job.status, job.model, job.fine_tuned_model || "", when(job.created_at)]) {
      const td = document.createElement("td");
      text(td, value);
      tr.append(td);
    }
    tr.children[1].className = `status-${job.status}`;
    tr.addEventListener("click", () => selectJob(job.id));
    return tr;
  });
  $("jobs").tBodies[0].replaceChildren(...rows);
}

async function selectJob(id) {
  selected = id;
  $("job").hidden = false;
  for (const tr of $("jobs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  await refreshJob();
}

async function refreshJob() {
  if (!selected) return;
  const id = selected;
  const [job, events, checkpoints] = await Promise.all([
    api(`/fine_tuning/jobs/${id}`),
    every(`/fine_tuning/jobs/${id}/events`),
    every(`/fine_tuning/jobs/${id}/checkpoints`),
  ]);
  if (id !== selected) return;
  text($("job-id"), job.id);
  text($("job-status"), job.status);
  $("job-status").className = `status-${job.status}`;
  text($("job-error"), job.error && job.error.message ? `${job.error.code || "error"}: ${job.error.message}` : "");
  const ordered = events.slice().sort((a, b) => a.created_at - b.created_at || (a.id < b.id ? -1 : 1));
  $("events").replaceChildren(...ordered.filter((e) => e.type !== "metrics").reverse().map((e) => {
    const li = document.createElement("li");
    text(li, `${when(e.created_at)}  ${e.level}: ${e.message}`);
    return li;
  }));
  drawCurve(ordered.filter((e) => e.type === "metrics" && e.data).map((e) => e.data));
  $("checkpoints").replaceChildren(...checkpoints.map((c) => {
    const li = document.createElement("li");
    const loss = c.metrics && c.metrics.valid_loss != null ? `, held-out loss ${c.metrics.valid_loss.toFixed(3)}` : "";
    text(li, `step ${c.step_number}: ${c.fine_tuned_model_checkpoint}${loss}`);
    return li;
  }));
  if (TERMINAL.has(job.status)) await showReport(job);
}

async function showReport(job) {
  for (const fileId of job.result_files || []) {
    const file = await api(`/files/${fileId}`);
    if (file.filename.endsWith("report.md")) {
      text($("report"), await api(`/files/${fileId}/content`, { raw: true }));
      return;
    }
  }
}

// Train loss per step and held-out loss where measured, on shared axes.
function drawCurve(rows) {
  const canvas = $("curve");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const points = (field) => rows.filter((r) => typeof r[field] === "number").map((r) => [r.step, r[field]]);
  const train = points("train_loss");
  const valid = points("valid_loss");
  canvas.dataset.points = String(train.length + valid.length);
  const all = train.concat(valid);
  if (!all.length) return;
  const pad = 34;
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys, Math.min(...ys) + 1e-6)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0)) * (canvas.width - 2 * pad);
  const sy = (y) => canvas.height - pad - ((y - y0) / (y1 - y0)) * (canvas.height - 2 * pad);
  ctx.strokeStyle = "#c4c9d4";
  ctx.strokeRect(pad, pad, canvas.width - 2 * pad, canvas.height - 2 * pad);
  ctx.fillStyle = "#5b6475";
  ctx.font = "11px system-ui";
  ctx.fillText(y1.toFixed(2), 2, pad + 4);
  ctx.fillText(y0.toFixed(2), 2, canvas.height - pad);
  ctx.fillText(`step ${x0}`, pad, canvas.height - 10);
  ctx.fillText(`${x1}`, canvas.width - pad - 12, canvas.height - 10);
  for (const [series, colour] of [[train, "#3a5bd9"], [valid, "#e07b00"]]) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    series.forEach(([x, y], i) => (i ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
    ctx.stroke();
  }
}

async function createJob(event) {
  event.preventDefault();
  const status = $("create-status");
  try {
    text(status, "uploading…");
    const upload = async (input) => {
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", input.files[0]);
      return (await api("/files", { method: "POST", body: form })).id;
    };
    const body = { model: $("base-model").value, training_file: await upload($("train-file")) };
    if ($("valid-file").files.length) body.validation_file = await upload($("valid-file"));
    if ($("suffix").value) body.suffix = $("suffix").value;
    const epochs = $("epochs").value ? Number($("epochs").value) : "auto";
    body.method = { type: "supervised", supervised: { hyperparameters: { n_epochs: epochs } } };
    const job = await api("/fine_tuning/jobs", { method: "POST", body });
    text(status, `created ${job.id}`);
    await refreshJobs();
    await selectJob(job.id);
  } catch (e) {
    text(status, `could not create the job: ${e.message}`);
  }
}

async function ask(model, question) {
  const reply = await api("/chat/completions", {
    method: "POST",
    body: { model, messages: [{ role: "user", content: question }], temperature: 0, max_tokens: 128 },
  });
  return reply.choices[0].message.content;
}

async function tryIt(event) {
  event.preventDefault();
  const tuned = $("tuned-model").value;
  const job = jobs.find((j) => j.fine_tuned_model === tuned);
  const base = job ? job.model : $("base-model").value;
  const question = $("question").value;
  text($("base-name"), base);
  text($("tuned-name"), tuned);
  text($("base-answer"), "…");
  text($("tuned-answer"), "…");
  const show = (el) => [(answer) => text(el, answer), (e) => text(el, `error: ${e.message}`)];
  await Promise.all([
    ask(base, question).then(...show($("base-answer"))),
    ask(tuned, question).then(...show($("tuned-answer"))),
  ]);
}

async function tick() {
  try {
    await refreshJobs();
    const job = jobs.find((j) => j.id === selected);
    if (job && (!TERMINAL.has(job.status) || $("report").dataset.shown !== job.id)) {
      await refreshJob();
      if (TERMINAL.has(job.status)) $("report").dataset.shown = job.id;
    }
    if (jobs.some((j) => j.status === "succeeded")) await loadModels();
  } catch (e) {
    if (e.status === 401) signOut();
  }
}

$("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("key").value.trim()); });
$("signout").addEventListener("click", signOut);
$("create-form").addEventListener("submit", createJob);
$("try-form").addEventListener("submit", tryIt);
if (key) signIn(key);
