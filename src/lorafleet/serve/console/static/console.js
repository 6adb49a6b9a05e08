// lorafleet console: a little plain JavaScript on top of server-rendered pages. No build step.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
const REFRESH_MS = 3000;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

function showMessage(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = "message" + (isError ? " error" : "");
  box.hidden = false;
}

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
    body: JSON.stringify(body || {}),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || ("HTTP " + response.status));
  return data;
}

const fmt = (v, digits = 3) => (v === null || v === undefined) ? "–" : Number(v).toFixed(digits);
const pct = (v) => (v === null || v === undefined) ? "–" : (100 * v).toFixed(1) + "%";
const cell = (text) => { const td = document.createElement("td"); td.textContent = text; return td; };

function lineChart(element, title, xs, named, yLabel, yRange) {
  // named: [[label, values], ...]; uPlot draws nulls as gaps.
  const series = [{}].concat(named.map(([label], i) => ({label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: title === "step", points: {show: true, size: 5}})));
  const opts = {width: Math.max(320, element.clientWidth || 480), height: 220, series,
                scales: {x: {time: title !== "step"}, y: yRange ? {range: yRange} : {}}, axes: [{}, {label: yLabel}]};
  element.replaceChildren();
  return new uPlot(opts, [xs].concat(named.map(([, values]) => values)), element);
}

// ---- Fleet: re-render the tables every few seconds --------------------------------------------
function initFleet() {
  const holder = document.getElementById("fleet-tables");
  setInterval(async () => {
    const response = await fetch(holder.dataset.refresh, {credentials: "same-origin"});
    if (response.redirected || !response.ok) return;
    holder.innerHTML = await response.text();
  }, REFRESH_MS);
}

// ---- Adapter: loss curves ------------------------------------------------------------------------
function initAdapter() {
  const element = document.getElementById("loss-chart");
  if (!element) return;
  const c = JSON.parse(document.getElementById("curves").textContent);
  const steps = Array.from(new Set(c.train_steps.concat(c.eval_steps))).sort((a, b) => a - b);
  const at = (xs, ys) => { const m = new Map(xs.map((x, i) => [x, ys[i]])); return steps.map((s) => m.has(s) ? m.get(s) : null); };
  const named = [["train loss", at(c.train_steps, c.train_loss)]];
  if (c.eval_steps.length) named.push(["eval loss", at(c.eval_steps, c.eval_loss)]);
  lineChart(element, "step", steps, named, "loss");
}

// ---- Aliases: weights, promote, rollback ---------------------------------------------------------
function initAliases() {
  for (const form of document.querySelectorAll("form.weights")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const inputs = Array.from(form.querySelectorAll("input[type=number]"));
      const bad = inputs.find((i) => i.value.trim() !== "" && !/^[0-9]+$/.test(i.value.trim()));
      if (bad) return showMessage(`weight of ${bad.name} must be a whole number of percent`, true);
      const total = inputs.reduce((sum, i) => sum + (parseInt(i.value || "0", 10)), 0);
      if (total !== 100) return showMessage(`weights sum to ${total}, they must sum to 100`, true);
      try {
        await postJSON(`/ui/api/aliases/${encodeURIComponent(form.dataset.alias)}/weights`, {weights: inputs.map((i) => [i.name, i.value.trim()])});
        location.reload();
      } catch (error) { showMessage(error.message, true); }
    });
  }
  for (const form of document.querySelectorAll("form.promote")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await postJSON(`/ui/api/aliases/${encodeURIComponent(form.dataset.alias)}/promote`, {version: form.elements.version.value});
        location.reload();
      } catch (error) { showMessage(error.message, true); }
    });
  }
  for (const button of document.querySelectorAll("button.do-rollback")) {
    button.addEventListener("click", async () => {
      try {
        await postJSON(`/ui/api/aliases/${encodeURIComponent(button.dataset.alias)}/rollback`);
        location.reload();
      } catch (error) { showMessage(error.message, true); }
    });
  }
}

// ---- Live metrics ---------------------------------------------------------------------------------
function initMetrics() {
  const charts = {rate: "chart-rate", p95: "chart-p95", ttft: "chart-ttft", errors: "chart-errors"};
  const ranges = {errors: [0, 1]};  // a rate: 0 to 1 even when every bucket is 0
  const refresh = async () => {
    const response = await fetch("/ui/api/metrics", {credentials: "same-origin"});
    if (!response.ok) return showMessage("metrics: HTTP " + response.status, true);
    const view = await response.json();
    document.getElementById("window").textContent = view.window_s;
    const body = document.querySelector("#live-table tbody");
    body.replaceChildren(...(view.table.length ? view.table.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.series = s.alias + " " + s.version;
      tr.append(cell(s.alias), cell(s.version), cell(s.requests), cell(fmt(s.rate_per_s, 2)), cell(fmt(s.p50_latency_s)),
                cell(fmt(s.p95_latency_s)), cell(fmt(s.p50_ttft_s)), cell(pct(s.error_rate)), cell(pct(s.fallback_rate)));
      return tr;
    }) : [Object.assign(document.createElement("tr"), {innerHTML: '<td colspan="9" class="muted">no requests in the window</td>'})]));
    const xs = view.bucket_starts.map((t) => t + view.bucket_s);
    for (const [key, id] of Object.entries(charts)) {
      lineChart(document.getElementById(id), "time", xs, Object.entries(view.series).map(([label, s]) => [label, s[key]]), key, ranges[key]);
    }
    const ab = document.getElementById("ab");
    const aliases = Object.entries(view.ab);
    if (!aliases.length) { ab.innerHTML = '<p class="muted">no alias splits traffic now</p>'; return; }
    ab.replaceChildren(...aliases.map(([alias, rows]) => {
      const table = document.createElement("table");
      table.className = "ab"; table.dataset.alias = alias;
      table.innerHTML = `<caption>${alias.replace(/[<>&]/g, "")}</caption><thead><tr><th>version</th><th>requests</th><th>share</th><th>p50</th><th>p95</th><th>TTFT p50</th><th>errors</th><th>fallbacks</th><th>mean tokens out</th></tr></thead>`;
      const tbody = document.createElement("tbody");
      for (const r of rows) {
        const tr = document.createElement("tr");
        tr.append(cell(r.version), cell(r.requests), cell(pct(r.share)), cell(fmt(r.p50_latency_s)), cell(fmt(r.p95_latency_s)),
                  cell(fmt(r.p50_ttft_s)), cell(pct(r.error_rate)), cell(pct(r.fallback_rate)), cell(fmt(r.mean_completion_tokens, 1)));
        tbody.append(tr);
      }
      table.append(tbody);
      return table;
    }));
  };
  refresh();
  setInterval(refresh, REFRESH_MS);
}

// ---- Playground: one prompt, two models, streamed side by side -------------------------------------
async function askSide(side, prompt, maxTokens) {
  const $ = (selector) => side.querySelector(selector);
  for (const s of [".answer", ".ttft", ".latency", ".tokens", ".adapter"]) $(s).textContent = s === ".answer" ? "" : "…";
  side.classList.remove("done", "failed");
  const started = performance.now();
  const response = await fetch("/ui/api/playground", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
    body: JSON.stringify({model: $(".model").value, prompt, max_tokens: maxTokens}),
  });
  $(".adapter").textContent = response.headers.get("x-lorafleet-adapter") || "–";
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    $(".answer").textContent = (data.error && data.error.message) || ("HTTP " + response.status);
    side.classList.add("failed");
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", first = null;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (event === "[DONE]") continue;
      const chunk = JSON.parse(event);
      if (chunk.error) { $(".answer").textContent += "\n[" + chunk.error.message + "]"; side.classList.add("failed"); continue; }
      const text = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
      if (text) {
        if (first === null) { first = performance.now(); $(".ttft").textContent = ((first - started) / 1000).toFixed(3) + " s"; }
        $(".answer").textContent += text;
      }
      if (chunk.usage) $(".tokens").textContent = chunk.usage.prompt_tokens + " / " + chunk.usage.completion_tokens;
    }
  }
  $(".latency").textContent = ((performance.now() - started) / 1000).toFixed(3) + " s";
  side.classList.add("done");
}

function initPlayground() {
  const form = document.getElementById("playground");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = form.elements.prompt.value, maxTokens = parseInt(form.elements.max_tokens.value, 10);
    await Promise.all(Array.from(document.querySelectorAll(".side")).map((side) => askSide(side, prompt, maxTokens)
      .catch((error) => { side.querySelector(".answer").textContent = String(error); side.classList.add("failed"); })));
  });
}

// ---- every page ----------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  const logout = document.getElementById("logout");
  if (logout) logout.addEventListener("click", async () => {
    await fetch("/ui/logout", {method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": csrf()}});
    location.href = "/ui/login";
  });
  const init = {fleet: initFleet, adapter: initAdapter, aliases: initAliases, metrics: initMetrics, playground: initPlayground}[document.body.dataset.page];
  if (init) init();
});
