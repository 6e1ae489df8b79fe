// The agentflux dashboard. Every piece of text from the server (prompts, dialogue, LLM
// output, artifacts, task descriptions) is set with textContent, never parsed as HTML.
"use strict";

const EVENT_TYPES = [
  "task_assigned", "plan_created", "phase_started", "phase_completed", "handoff", "artifact_produced",
  "dialogue", "approval_requested", "approval_resolved", "user_query", "user_response", "task_completed",
  "error", "stopped", "semaphore_resumed", "state_changed", "semaphore_ejected", "started", "dropped",
  "semaphore_saved", "semaphore_resolved", "semaphore_cancelled", "semaphore_voided", "semaphore_escalated",
  "task_restored", "gap",
];
const MAX_LINES = 500;
const HISTORY = 60;
const $ = (id) => document.getElementById(id);
const series = new Map(); // flux id -> {pressure: [], flow: [], turbulence: []}
let approvals = [];

function token() { return sessionStorage.getItem("agentflux-token") || ""; }

function element(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

async function api(path, body) {
  const options = { headers: {} };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.headers["Authorization"] = "Bearer " + token();
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function showError(message) { $("form-error").textContent = message || ""; }

function renderApprovals() {
  const list = $("approvals");
  list.replaceChildren();
  if (!approvals.length) list.append(element("li", "none waiting"));
  for (const token of approvals) {
    const item = element("li", null, { class: "approval", "data-severity": token.severity || "info" });
    if (token.error) {
      item.append(element("div", `${token.id}: unreadable here (${token.error})`));
      list.append(item);
      continue;
    }
    item.append(element("div", token.prompt, { class: "prompt" }));
    const due = element("div", "", { class: "deadline", "data-deadline": token.deadline || "" });
    item.append(element("small", `${token.severity} · ${token.id}`), due);
    const options = token.options && token.options.length ? token.options : ["approve", "reject"];
    for (const option of options) {
      const button = element("button", option, { "data-token": token.id });
      button.addEventListener("click", async () => {
        button.disabled = true;
        try { await api(`/api/semaphores/${encodeURIComponent(token.id)}/resolve`, { input: option }); showError(); }
        catch (error) { showError(`${token.id}: ${error.message}`); }
        refresh();
      });
      item.append(button);
    }
    list.append(item);
  }
  tickDeadlines();
}

function tickDeadlines() {
  for (const node of document.querySelectorAll(".deadline")) {
    const deadline = node.getAttribute("data-deadline");
    if (!deadline) continue;
    const seconds = Math.round((Date.parse(deadline) - Date.now()) / 1000);
    node.textContent = seconds > 0 ? `due in ${seconds} s` : "past its deadline";
  }
}

async function showTask(id, holder) {
  const task = await api(`/api/tasks/${encodeURIComponent(id)}`);
  holder.replaceChildren();
  for (const artifact of task.artifacts) {
    holder.append(element("h4", `${artifact.phase} · ${artifact.builder}: ${artifact.title}`));
    holder.append(element("pre", artifact.content));
  }
  if (task.dialogue && task.dialogue.length) {
    holder.append(element("h4", "dialogue"));
    const lines = element("ol", null, { class: "dialogue" });
    for (const line of task.dialogue.slice(-40)) {
      lines.append(element("li", `${line.builder} (${line.phase}): ${line.text}`));
    }
    holder.append(lines);
  }
}

function renderTasks(tasks) {
  const list = $("tasks");
  list.replaceChildren();
  for (const task of tasks.slice().reverse()) {
    const item = element("li", null, { class: "task", "data-task": task.id, "data-status": task.status });
    item.append(element("strong", task.description));
    item.append(element("div", `${task.status} · ${task.phase} · lead ${task.lead_builder || "-"} · ` +
      `${task.artifacts.length} artifact(s)` + (task.restored ? " · from an earlier run" : ""),
      { class: "status" }));
    const holder = element("div");
    const button = element("button", "artifacts");
    button.addEventListener("click", () => showTask(task.id, holder).catch((e) => showError(e.message)));
    item.append(button, holder);
    list.append(item);
  }
}

function draw(canvas, values) {
  const context = canvas.getContext("2d");
  canvas.width = canvas.clientWidth || 300;
  canvas.height = 60;
  context.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1e-9, ...values);
  context.beginPath();
  values.forEach((value, index) => {
    const x = (index / Math.max(1, HISTORY - 1)) * canvas.width;
    const y = canvas.height - (value / top) * (canvas.height - 4) - 2;
    if (index === 0) context.moveTo(x, y); else context.lineTo(x, y);
  });
  context.stroke();
}

function renderMetrics(metrics) {
  const charts = $("charts");
  for (const [flux, snapshot] of Object.entries(metrics)) {
    if (!series.has(flux)) series.set(flux, { pressure: [], flow: [], turbulence: [] });
    const kept = series.get(flux);
    for (const name of ["pressure", "flow", "turbulence"]) {
      kept[name].push(Number(snapshot[name]) || 0);
      if (kept[name].length > HISTORY) kept[name].shift();
    }
  }
  charts.replaceChildren();
  for (const [flux, kept] of series) {
    charts.append(element("h4", flux));
    for (const name of ["pressure", "flow", "turbulence"]) {
      const values = kept[name];
      charts.append(element("div", `${name}: ${values[values.length - 1].toFixed(3)}`));
      const canvas = element("canvas", null, { "aria-label": `${flux} ${name}` });
      charts.append(canvas);
      draw(canvas, values);
    }
  }
}

let refreshing = null;
function refresh() {
  // Coalesce: one refresh at a time, one more queued at most (events come in bursts).
  if (refreshing) { refreshing.again = true; return; }
  refreshing = { again: false };
  Promise.all([api("/api/semaphores"), api("/api/tasks"), api("/api/metrics")])
    .then(([pending, tasks, metrics]) => { approvals = pending; renderApprovals(); renderTasks(tasks); renderMetrics(metrics); })
    .catch((error) => showError(error.message))
    .finally(() => { const again = refreshing.again; refreshing = null; if (again) refresh(); });
}

function addLine(kind, data) {
  const list = $("events");
  const text = data.task ? `[${kind}] ${data.task}: ${data.message}` : `[${kind}] ${data.message}`;
  list.append(element("li", text, { "data-type": kind }));
  while (list.children.length > MAX_LINES) list.firstChild.remove();
  list.scrollTop = list.scrollHeight;
}

function connect() {
  const source = new EventSource("/api/events"); // reconnects by itself, sending Last-Event-ID
  const state = $("connection");
  source.onopen = () => { state.dataset.state = "live"; state.textContent = "live"; refresh(); };
  source.onerror = () => { state.dataset.state = "reconnecting"; state.textContent = "reconnecting…"; };
  for (const kind of EVENT_TYPES) {
    source.addEventListener(kind, (message) => {
      let data;
      try { data = JSON.parse(message.data); } catch { return; }
      addLine(kind, data);
      refresh();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("agentflux-token", $("token").value.trim());
    showError();
  });
  $("task-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const seed = $("seed").value;
    try {
      await api("/api/tasks", {
        description: $("description").value,
        seed: seed === "" ? null : Number(seed),
        gates: $("gate").checked ? ["integrating"] : [],
        llm: $("llm").checked ? {} : null,
      });
      $("description").value = "";
      showError();
    } catch (error) { showError(error.message); }
    refresh();
  });
  setInterval(tickDeadlines, 1000);
  connect();
  refresh();
});
