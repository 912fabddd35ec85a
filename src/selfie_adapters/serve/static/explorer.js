// selfie explorer: a lens grid (rows = layers, columns = tokens) over the server's /lens, /describe, /ask and /info.
// Plain browser JavaScript, no build step and no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, lens: null, cells: [], selected: null, range: null, cellAt: null };

// --- talking to the server ---------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem("selfie-token");
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

async function call(path, body) {
  const res = await fetch(path, body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (res.status === 401) { $("token-box").hidden = false; throw new Error("this server needs an API token"); }
  if (!res.ok) {
    let msg = res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

async function* ndjsonLines(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) yield JSON.parse(line);
    }
  }
  if (buf.trim()) yield JSON.parse(buf);
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// --- setup -------------------------------------------------------------------------------------
async function loadInfo() {
  try {
    const info = await (await call("/info")).json();
    state.info = info;
    const adapter = info.adapter ? `${info.adapter.projection_type} adapter` : "no adapter (baseline only)";
    const name = info.model.split("/").filter(Boolean).slice(-2).join("/");
    $("model-info").textContent = `${name} · ${info.layers} layers · d=${info.hidden_size} · ${adapter}`;
    $("model-info").title = info.model;
    $("layer-from").max = $("layer-to").max = info.layers - 1;
    $("layer-to").value = info.layers - 1;
    $("mode-adapter").disabled = !info.modes.includes("adapter");
    $(info.modes.includes("adapter") ? "mode-adapter" : "mode-baseline").checked = true;
    $("chat").checked = info.chat_template;
    updateScalePlaceholder();
    setStatus("ready");
  } catch (e) {
    setStatus(e.message, true);
  }
}

function mode() { return document.querySelector("input[name=mode]:checked").value; }

function updateScalePlaceholder() {
  if (state.info) $("scale").placeholder = String(state.info.lens_scale[mode()]);
}

// --- the lens grid -----------------------------------------------------------------------------
function showToken(t) {
  return t.replace(/\n/g, "⏎").replace(/^ +$/, (s) => "␣".repeat(s.length));
}

function lensRequest() {
  const from = Number($("layer-from").value), to = Number($("layer-to").value);
  const layers = [];
  for (let L = Math.min(from, to); L <= Math.max(from, to); L++) layers.push(L);
  const body = { prompt: $("prompt").value, layers, mode: mode(), chat: $("chat").checked,
                 max_new_tokens: Number($("max-new-tokens").value) || 24, stream: true };
  if ($("scale").value !== "") body.scale = Number($("scale").value);
  return body;
}

async function runLens(event) {
  event.preventDefault();
  if (!$("prompt").value.trim()) { setStatus("type a prompt first", true); return; }
  $("run").disabled = true;
  $("export-json").disabled = $("export-png").disabled = true;
  setStatus("reading the states…");
  const started = performance.now();
  try {
    const res = await call("/lens", lensRequest());
    let done = 0, total = 0;
    for await (const msg of ndjsonLines(res)) {
      if (msg.error) throw new Error(msg.error);
      if (msg.tokens) { buildGrid(msg); total = msg.layers.length * msg.tokens.length; continue; }
      fillCell(msg);
      done += 1;
      if (done % 8 === 0 || done === total) setStatus(`${done} / ${total} cells`);
    }
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(`${done} cells in ${secs} s — click a cell for samples`);
    $("export-json").disabled = $("export-png").disabled = false;
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("run").disabled = false;
  }
}

function buildGrid(header) {
  state.lens = { ...header, grid: header.layers.map(() => header.tokens.map(() => null)) };
  state.cells = [];
  state.range = null;
  const table = $("grid");
  table.replaceChildren();
  const head = table.insertRow();
  head.appendChild(Object.assign(document.createElement("th"), { className: "layer", textContent: "layer" }));
  for (const t of header.tokens) head.appendChild(Object.assign(document.createElement("th"), { textContent: showToken(t) }));
  header.layers.forEach((layer, r) => {
    const row = table.insertRow();
    row.appendChild(Object.assign(document.createElement("th"), { className: "layer", textContent: layer }));
    state.cells.push(header.tokens.map((_, c) => {
      const td = row.insertCell();
      td.className = "pending";
      td.appendChild(Object.assign(document.createElement("div"), { className: "label", textContent: "…" }));
      td.dataset.row = r;
      td.dataset.col = c;
      td.addEventListener("click", () => openCell(r, c));
      return td;
    }));
  });
  $("detail").hidden = true;
}

function fillCell(d) {
  const cell = state.lens.grid[d.row][d.col] || { label: d.label, logprob: d.logprob, samples: [] };
  const { row, col, ...rest } = d;
  cell.samples.push(rest);
  state.lens.grid[row][col] = cell;
  const td = state.cells[row][col];
  td.classList.remove("pending");
  td.firstChild.textContent = cell.label || "∅";
  td.title = `layer ${state.lens.layers[row]}, token ${JSON.stringify(state.lens.tokens[col])}\n` +
             `${cell.label}\nmean log-prob ${cell.logprob.toFixed(3)}`;
  if (updateRange()) repaint(); else paintCell(row, col);
}

function matcher() {
  const word = $("search").value.trim();
  if (!word) return null;
  return new RegExp("(^|[^\\p{L}\\p{N}])" + word.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "($|[^\\p{L}\\p{N}])", "iu");
}

function cellColour(cell, re) {
  if (!cell) return "#ffffff";
  if ($("colour").value === "match") {
    if (!re) return "#ffffff";
    const hits = cell.samples.filter((s) => re.test(s.label)).length / cell.samples.length;
    return `rgba(234, 88, 12, ${(hits > 0 ? 0.15 + 0.8 * hits : 0.03).toFixed(3)})`;
  }
  return ramp(confidence(cell));
}

// a cell's mean token log-prob, placed between the lowest and highest in the grid: 0 … 1
function confidence(cell) {
  const { lo, hi } = state.range;
  return hi > lo ? (cell.logprob - lo) / (hi - lo) : 1;
}

function updateRange() {
  const lps = state.lens.grid.flat().filter(Boolean).map((c) => c.logprob);
  const range = { lo: Math.min(...lps), hi: Math.max(...lps) };
  const changed = !state.range || range.lo !== state.range.lo || range.hi !== state.range.hi;
  state.range = range;
  updateLegend();
  return changed;
}

function ramp(t) {  // near-white → light blue → deep blue
  const stops = [[241, 245, 249], [147, 197, 253], [29, 78, 216]];
  const x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const rgb = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return `rgb(${rgb.join(", ")})`;
}

function paintCell(r, c, re = matcher()) {
  const cell = state.lens.grid[r][c];
  const td = state.cells[r][c];
  td.style.background = cellColour(cell, re);
  td.style.color = cell && confidence(cell) > 0.7 && $("colour").value === "logprob" ? "#fff" : "";
}

function updateLegend() {
  $("legend").textContent = $("colour").value === "match"
    ? "orange = share of a cell's samples that name the word"
    : state.range ? `colour = mean token log-prob, ${state.range.lo.toFixed(2)} (light) … ${state.range.hi.toFixed(2)} (dark)`
      : "colour = mean token log-prob (light = low, dark = high)";
}

function repaint() {
  if (!state.lens) return;
  const re = matcher();
  state.lens.grid.forEach((row, r) => row.forEach((_, c) => paintCell(r, c, re)));
}

// --- one cell: samples and relevancy -----------------------------------------------------------
async function openCell(r, c) {
  const lens = state.lens;
  if (state.selected) state.selected.classList.remove("selected");
  state.selected = state.cells[r][c];
  state.selected.classList.add("selected");
  $("detail").hidden = false;
  state.cellAt = { lens, r, c };
  $("answer").replaceChildren();
  $("detail-title").textContent = `layer ${lens.layers[r]} · token ${JSON.stringify(lens.tokens[c])} (position ${lens.positions[c]})`;
  const list = $("samples");
  list.replaceChildren(Object.assign(document.createElement("li"), { textContent: "sampling…" }));
  try {
    const body = { prompt: lens.prompt, layer: lens.layers[r], position: lens.positions[c], chat: lens.chat,
                   mode: lens.mode, scales: lens.scales, samples: 6, temperature: 0.8, seed: r * 1000 + c,
                   relevancy: true, max_new_tokens: Number($("max-new-tokens").value) || 24 };
    const result = await (await call("/describe", body)).json();
    list.replaceChildren(...result.rows.map(sampleItem));
  } catch (e) {
    list.replaceChildren(Object.assign(document.createElement("li"), { textContent: e.message }));
  }
}

function sampleItem(row) {
  const li = document.createElement("li");
  li.className = "sample";
  const shown = (row.relevancy || [[row.text, 0]]).filter(([tok]) => !/^<\|.*\|>$/.test(tok));  // hide end-of-turn
  for (const [tok, rel] of shown) {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = tok;
    span.title = `relevancy ${rel.toFixed(3)}`;
    span.style.background = `rgba(234, 88, 12, ${Math.min(1, rel).toFixed(3)})`;
    li.appendChild(span);
  }
  li.appendChild(Object.assign(document.createElement("span"), { className: "lp", textContent: row.logprob.toFixed(2) }));
  if (row.score) {  // the server has a reconstructor: how well the vector comes back from this label
    const s = row.score;
    li.appendChild(Object.assign(document.createElement("span"), {
      className: row.best ? "rt best" : "rt",
      textContent: `${row.best ? "★ " : ""}round trip ${s.cos.toFixed(2)}`,
      title: `cos ${s.cos.toFixed(3)} · centred cos ${s.centred_cos === null ? "–" : s.centred_cos.toFixed(3)}` +
             ` · mse_nrm ${s.mse_nrm.toFixed(3)} · fve_nrm ${s.fve_nrm === null ? "–" : s.fve_nrm.toFixed(3)}` +
             (row.best ? " · best of this vector's samples" : ""),
    }));
  }
  return li;
}

// --- one cell: ask it a question ---------------------------------------------------------------
function askRequest() {
  const { lens, r, c } = state.cellAt;
  const body = { prompt: lens.prompt, layer: lens.layers[r], position: lens.positions[c], chat: lens.chat,
                 mode: lens.mode, scales: lens.scales, question: $("question").value,
                 max_new_tokens: Number($("max-new-tokens").value) || 24 };
  const choices = $("choices").value.split(",").map((x) => x.trim()).filter((x, i, all) => x || all.length > 1);
  if ($("choices").value.trim()) body.choices = choices;
  return body;
}

async function askCell(event) {
  event.preventDefault();
  const out = $("answer");
  if (!state.cellAt) { out.textContent = "click a cell first"; return; }
  out.textContent = "asking…";
  $("ask").disabled = true;
  try {
    const row = (await (await call("/ask", askRequest())).json()).rows[0];
    out.replaceChildren(...(row.probs ? choiceItems(row) : [answerItem(row)]));
  } catch (e) {
    out.replaceChildren(Object.assign(document.createElement("p"), { className: "error", textContent: e.message }));
  } finally {
    $("ask").disabled = false;
  }
}

function answerItem(row) {
  return Object.assign(document.createElement("p"), { className: "answer", textContent: row.answer || "∅",
                                                      title: `mean log-prob ${row.logprob.toFixed(3)}` });
}

function choiceItems(row) {  // one bar per choice, the argmax in bold
  return Object.entries(row.probs).map(([choice, p]) => {
    const div = document.createElement("div");
    div.className = "choice" + (choice === row.choice ? " best" : "");
    div.textContent = `${choice}: ${(100 * p).toFixed(1)}%`;
    div.style.background = `linear-gradient(90deg, rgba(29, 78, 216, 0.25) ${(100 * p).toFixed(1)}%, transparent 0)`;
    return div;
  });
}

// --- export ------------------------------------------------------------------------------------
function download(blob, name) {
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function exportJson() {
  download(new Blob([JSON.stringify(state.lens, null, 1)], { type: "application/json" }), "selfie-lens.json");
}

function exportPng() {
  const lens = state.lens, re = matcher();
  const cw = 130, ch = 26, lw = 50, hh = 30, scale = 2;
  const canvas = document.createElement("canvas");
  canvas.width = (lw + cw * lens.tokens.length) * scale;
  canvas.height = (hh + ch * lens.layers.length) * scale;
  const g = canvas.getContext("2d");
  g.scale(scale, scale);
  g.fillStyle = "#fff";
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.font = "11px sans-serif";
  g.textBaseline = "middle";
  const clip = (text, width) => {
    let t = text;
    while (t.length > 1 && g.measureText(t).width > width) t = t.slice(0, -2) + "…";
    return t;
  };
  lens.tokens.forEach((t, c) => { g.fillStyle = "#1f2933"; g.fillText(clip(showToken(t), cw - 6), lw + c * cw + 3, hh / 2); });
  lens.layers.forEach((layer, r) => {
    g.fillStyle = "#66727f";
    g.fillText(String(layer), 6, hh + r * ch + ch / 2);
    lens.tokens.forEach((_, c) => {
      const cell = lens.grid[r][c];
      g.fillStyle = cellColour(cell, re);
      g.fillRect(lw + c * cw, hh + r * ch, cw - 1, ch - 1);
      g.fillStyle = "#1f2933";
      if (cell) g.fillText(clip(cell.label || "∅", cw - 6), lw + c * cw + 3, hh + r * ch + ch / 2);
    });
  });
  canvas.toBlob((blob) => download(blob, "selfie-lens.png"), "image/png");
}

// --- wiring ------------------------------------------------------------------------------------
$("controls").addEventListener("submit", runLens);
$("colour").addEventListener("change", () => { updateLegend(); repaint(); });
$("search").addEventListener("input", () => {
  if ($("search").value) $("colour").value = "match";
  updateLegend();
  repaint();
});
$("ask-form").addEventListener("submit", askCell);
$("export-json").addEventListener("click", exportJson);
$("export-png").addEventListener("click", exportPng);
document.querySelectorAll("input[name=mode]").forEach((el) => el.addEventListener("change", updateScalePlaceholder));
$("token").addEventListener("change", () => { sessionStorage.setItem("selfie-token", $("token").value); loadInfo(); });
updateLegend();
loadInfo();
