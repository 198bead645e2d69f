"""A trace as one self-contained HTML page: inline CSS and JavaScript, the trace as inline JSON,
nothing fetched (it opens from a file, offline, and can be mailed).

What it shows (docs/trace.md): the completion with each call's committed span coloured
(accepted proposal, the target's bonus or correction, the target's own token), a step
slider with play/pause over the calls, the current call's proposal as a tree (SVG; chains
and n-gram candidates are trees too) with the accepted path highlighted, the diffusion
canvas filling in over steps (and a CTC frame strip for speech), acceptance per draft
position, tokens per call, and the time split draft / verify / other.

Large traces: the text is built once, one element per call, and a step only toggles the
elements between the old and the new call; the tree and the canvas are drawn for the
current call only, so a 2,048-token trace steps as fast as a short one.
"""

from __future__ import annotations

import html

from paragen.trace import Trace

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
:root { --acc:#2e9d4f; --bonus:#1f77d0; --corr:#d9822b; --rej:#d0453a; --mute:#9aa3ad; --bg:#fafbfc; --ink:#1d2329; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: var(--bg); }
header { padding: 10px 16px; background: #fff; border-bottom: 1px solid #e3e6ea; }
header h1 { font-size: 17px; margin: 0 0 2px; }
header .sum { color: #555; }
#controls { position: sticky; top: 0; z-index: 2; display: flex; gap: 8px; align-items: center; padding: 8px 16px;
  background: #fff; border-bottom: 1px solid #e3e6ea; }
#controls button { font: inherit; padding: 3px 10px; border: 1px solid #c9ced4; border-radius: 5px;
  background: #f4f6f8; cursor: pointer; }
#controls input[type=range] { flex: 1; }
#step { min-width: 120px; text-align: right; font-variant-numeric: tabular-nums; }
main { display: grid; grid-template-columns: minmax(0, 1.2fr) minmax(0, 1fr); gap: 12px; padding: 12px 16px; }
.panel { background: #fff; border: 1px solid #e3e6ea; border-radius: 8px; padding: 10px 12px; min-width: 0; }
.panel h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: #666; margin: 0 0 6px; }
.wide { grid-column: 1 / -1; }
#text { font: 13px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-all;
  max-height: 360px; overflow: auto; }
#text .prompt { color: #8a939c; }
#text .call { cursor: pointer; border-radius: 2px; }
#text .call.future { display: none; }
#text .call.current { outline: 2px solid #222; background: #fff6c9; }
.tok.acc { background: #d5f0dc; color: #135c28; }
.tok.bonus { background: #d9e9fb; color: #0f4a8a; }
.tok.corrected { background: #fde3c7; color: #86480a; }
.tok.own { color: var(--ink); }
.tok.nar { background: #ece3fb; color: #4b2a86; }
.legend span { display: inline-block; padding: 0 6px; margin-right: 6px; border-radius: 3px; font-size: 12px; }
#info { font-size: 13px; margin-bottom: 6px; }
#info b { font-variant-numeric: tabular-nums; }
#treebox { max-height: 460px; overflow: auto; }
svg text { font: 11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.node rect { stroke-width: 1.2; }
.node.root rect { fill: #eef1f4; stroke: #6b7580; }
.node.accepted rect { fill: #d5f0dc; stroke: var(--acc); stroke-width: 2; }
.node.rejected rect { fill: #fff; stroke: var(--rej); }
.node.unreached rect { fill: #f6f7f8; stroke: #d2d6db; }
.node.unreached text { fill: #9aa3ad; }
.node.bonus rect { fill: #d9e9fb; stroke: var(--bonus); stroke-dasharray: 4 2; stroke-width: 2; }
.node.corrected rect { fill: #fde3c7; stroke: var(--corr); stroke-dasharray: 4 2; stroke-width: 2; }
.node.own rect { fill: #fff; stroke: #333; stroke-dasharray: 4 2; }
.edge { stroke: #c3c9cf; fill: none; }
.edge.on { stroke: var(--acc); stroke-width: 2.4; }
table.small { border-collapse: collapse; font-size: 12px; }
table.small td, table.small th { padding: 1px 6px; border-bottom: 1px solid #eef0f2; text-align: left; }
table.grid td { font: 11px ui-monospace, Menlo, monospace; border: 1px solid #e3e6ea; padding: 1px 4px; }
#canvasbox { max-height: 460px; overflow: auto; }
.axis { font-size: 10px; fill: #666; }
.muted { color: #888; }
</style></head>
<body>
<header><h1>__TITLE__</h1><div class="sum" id="summary"></div></header>
<div id="controls">
  <button id="first" title="first call (Home)">|&#x25C0;</button>
  <button id="prev" title="previous call (&larr;)">&#x25C0;</button>
  <button id="play" title="play / pause (space)">play</button>
  <button id="next" title="next call (&rarr;)">&#x25B6;</button>
  <button id="last" title="last call (End)">&#x25B6;|</button>
  <input id="slider" type="range" min="0" max="0" value="0" aria-label="call">
  <select id="speed" aria-label="speed"><option value="600">slow</option><option value="200" selected>normal</option>
    <option value="50">fast</option></select>
  <span id="step"></span>
</div>
<main>
  <section class="panel wide"><h2>Completion, one span per call</h2>
    <div class="legend"><span class="tok acc">accepted proposal</span><span class="tok bonus">target's bonus token</span>
      <span class="tok corrected">target's correction</span><span class="tok own">target's own token</span>
      <span class="tok nar">filled in parallel</span></div>
    <div id="text"></div></section>
  <section class="panel"><h2>This call</h2><div id="info"></div><div id="treebox"></div><div id="detail"></div></section>
  <section class="panel" id="canvaspanel"><h2 id="canvastitle">Canvas</h2>
    <div id="canvasbox"><canvas id="canvas" width="10" height="10"></canvas></div>
    <div id="framesbox"><canvas id="frames" width="10" height="10"></canvas></div></section>
  <section class="panel"><h2>Acceptance per draft position</h2><div id="accept"></div></section>
  <section class="panel"><h2>Tokens per call, and where the time went</h2><div id="percall"></div><div id="time"></div></section>
</main>
<script type="application/json" id="trace-data">__DATA__</script>
<script>
"use strict";
const T = JSON.parse(document.getElementById("trace-data").textContent);
const calls = T.calls, N = calls.length;
const TREE = ["none", "chain", "tree", "ngram", "jacobi"], FILL = ["diffusion", "nar"];
const $ = id => document.getElementById(id);
const piece = id => (T.pieces && T.pieces[id] !== undefined) ? T.pieces[id] : "<" + id + ">";
const vis = s => s.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
const short = (s, n) => s.length > n ? s.slice(0, n - 1) + "\u2026" : s;
const ms = s => (1000 * s).toFixed(s < 0.001 ? 3 : 1) + " ms";
const NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function el(tag, cls, text, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

// ---- summary
const S = T.stats || {};
const meta = T.meta || {};
const tokensTotal = T.tokens.length;
const verifyCalls = calls.reduce((a, c) => a + c.target_calls, 0);
$("summary").textContent = [T.strategy, meta.model, tokensTotal + " tokens", verifyCalls + " target calls",
  (verifyCalls ? (tokensTotal / verifyCalls).toFixed(2) : "-") + " tokens/call",
  S.seconds !== undefined ? S.seconds.toFixed(3) + " s" : null, "schema " + T.schema].filter(Boolean).join(" \u00b7 ");

// ---- the completion: one element per call, built once
const textBox = $("text"), groups = [];
const pt = T.prompt_text || "";
el("span", "prompt", pt.length > 600 ? "\u2026" + pt.slice(-600) : pt, textBox);
calls.forEach((c, i) => {
  const g = el("span", "call future", undefined, textBox);
  const nAcc = TREE.includes(c.kind) ? c.accepted.length : 0;
  c.committed.slice(0, c.kept).forEach((t, j) => {
    const cls = !TREE.includes(c.kind) ? "nar" : j < nAcc ? "acc" : c.own;
    el("span", "tok " + cls, piece(t), g);
  });
  g.title = "call " + (i + 1);
  g.addEventListener("click", () => { stop(); go(i); });
  groups.push(g);
});

// ---- the current call
function info(c, i) {
  const dec = c.decisions || [];
  const count = k => dec.filter(d => d === k).length;
  const parts = ["call <b>" + (i + 1) + "</b> of " + N, c.kind + (c.source ? " from " + c.source : "")];
  if (TREE.includes(c.kind) && c.tokens.length)
    parts.push(c.tokens.length + " proposed, <b>" + c.accepted.length + "</b> accepted, " + count("rejected") + " rejected");
  if (FILL.includes(c.kind)) parts.push(c.tokens.length + " predicted, <b>" + c.accepted.length + "</b> unmasked");
  if (TREE.includes(c.kind) && c.committed.length > c.accepted.length) parts.push("+1 " + c.own);
  parts.push("kept " + c.kept + " token" + (c.kept === 1 ? "" : "s"));
  parts.push("draft " + ms(c.draft_s) + ", verify " + ms(c.verify_s) + ", other " + ms(c.other_s));
  $("info").innerHTML = parts.join(" \u00b7 ");
}

function drawTree(c) {
  const box = $("treebox");
  box.textContent = "";
  if (!TREE.includes(c.kind)) return;
  const n = Math.min(c.tokens.length, 400);
  const kids = Array.from({length: n + 2}, () => []);
  const nodes = [{tok: null, cls: "root", depth: 0}];
  const acc = new Set(c.accepted);
  for (let k = 0; k < n; k++) {
    const par = c.parents[k] + 1;
    if (par > n) continue;
    nodes.push({tok: c.tokens[k], cls: (c.decisions || [])[k] || "unreached", depth: 0, k: k, par: par});
    kids[par].push(k + 1);
  }
  const ownTok = c.committed.length > c.accepted.length ? c.committed[c.accepted.length] : null;
  if (ownTok !== null) {
    const par = c.accepted.length ? c.accepted[c.accepted.length - 1] + 1 : 0;
    nodes.push({tok: ownTok, cls: c.own, depth: 0, par: par, own: true});
    kids[par].push(nodes.length - 1);
  }
  // leaves get consecutive rows, a parent sits at its first child's row (reads like text)
  let row = 0;
  const place = (v, d) => {
    nodes[v].depth = d;
    if (!kids[v].length) { nodes[v].row = row++; return; }
    kids[v].forEach(w => place(w, d + 1));
    nodes[v].row = nodes[kids[v][0]].row;
  };
  place(0, 0);
  const W = 92, H = 24, bw = 82, bh = 18;
  const depth = Math.max(...nodes.map(v => v.depth));
  const s = svg("svg", {width: (depth + 1) * W + 10, height: Math.max(row, 1) * H + 8, id: "tree"}, box);
  const xy = v => [6 + nodes[v].depth * W, 4 + nodes[v].row * H];
  nodes.forEach((v, i) => {
    if (i === 0) return;
    const [x0, y0] = xy(v.par), [x1, y1] = xy(i);
    const on = (v.k !== undefined && acc.has(v.k)) || v.own;
    svg("path", {d: `M${x0 + bw},${y0 + bh / 2} C${x0 + bw + 6},${y0 + bh / 2} ${x1 - 6},${y1 + bh / 2} ${x1},${y1 + bh / 2}`,
      class: "edge" + (on ? " on" : "")}, s);
  });
  nodes.forEach((v, i) => {
    const [x, y] = xy(i);
    const g = svg("g", {class: "node " + v.cls, transform: `translate(${x},${y})`}, s);
    svg("rect", {width: bw, height: bh, rx: 4}, g);
    const label = i === 0 ? "\u25cf newest" : vis(piece(v.tok));
    svg("text", {x: 5, y: 13}, g, short(label, 11));
    let tip = i === 0 ? "root: the newest committed token" : JSON.stringify(piece(v.tok)) + " (" + v.tok + ") " + v.cls;
    if (v.k !== undefined && c.p) tip += " \u00b7 target p=" + c.p[v.k];
    if (v.k !== undefined && c.q && c.q[v.k] !== null) tip += " \u00b7 draft q=" + c.q[v.k];
    if (v.own && c.next_p !== null) tip += " \u00b7 target p=" + c.next_p;
    svg("title", {}, g, tip);
  });
}

function drawDetail(c) {
  const box = $("detail");
  box.textContent = "";
  const d = c.detail || {};
  if (d.window) {
    el("div", "muted", "lookahead window (rows: levels, columns: guesses ahead) and the new row", box);
    const t = el("table", "grid", undefined, box);
    d.window.concat([d.new_row]).forEach((r, ri) => {
      const tr = el("tr", ri === d.window.length ? "new" : "", undefined, t);
      r.forEach(x => el("td", "", short(vis(piece(x)), 6), tr));
    });
  }
  if (d.update) el("div", "muted", "Jacobi update (next window): " + d.update.map(x => vis(piece(x))).join(" "), box);
  if (d.hypotheses) {
    const t = el("table", "small", undefined, box);
    d.hypotheses.forEach((h, j) => {
      const tr = el("tr", "", undefined, t);
      el("td", "", (c.scores ? c.scores[j].toFixed(2) : ""), tr);
      el("td", "", h.map(piece).join(""), tr);
    });
  }
  if (d.scores && c.kind === "rescore") el("div", "", "candidate scores: " + d.scores.map(x => x.toFixed(2)).join(", "), box);
  if (FILL.includes(c.kind) && c.scores) {  // the predicted positions, best score first
    const t = el("table", "small", undefined, box);
    const h = el("tr", "", undefined, t);
    ["position", "candidate", "score", "decision"].forEach(x => el("th", "", x, h));
    const order = c.positions.map((_, j) => j).sort((a, b) => c.scores[b] - c.scores[a]).slice(0, 32);
    order.forEach(j => {
      const tr = el("tr", "", undefined, t);
      [c.positions[j], vis(piece(c.tokens[j])), c.scores[j].toFixed(3), c.decisions[j]].forEach(v => el("td", "", String(v), tr));
    });
  }
  if (TREE.includes(c.kind) && c.tokens.length && c.kind !== "tree") {
    const t = el("table", "small", undefined, box);
    const h = el("tr", "", undefined, t);
    ["#", "token", "decision", "p target", "q draft"].forEach(x => el("th", "", x, h));
    c.tokens.slice(0, 64).forEach((x, k) => {
      const tr = el("tr", "", undefined, t);
      const q = c.q && c.q[k] !== null ? c.q[k] : "";
      [k + 1, vis(piece(x)), c.decisions[k], c.p ? c.p[k] : "", q].forEach(v => el("td", "", String(v), tr));
    });
  }
}

// ---- the canvas: positions filled in over calls (diffusion, mask-predict, NAR)
const fillCalls = calls.map((c, i) => FILL.includes(c.kind) ? i : -1).filter(i => i >= 0);
let lo = Infinity, hi = -Infinity;
for (const i of fillCalls) {
  const c = calls[i];
  for (const p of c.positions) { lo = Math.min(lo, p); hi = Math.max(hi, p); }
  if (c.block) { lo = Math.min(lo, c.block[0]); hi = Math.max(hi, c.block[1] - 1); }
}
const CW = 34, CH = 22;
function drawCanvas(cur) {
  const cv = $("canvas");
  if (!fillCalls.length) {
    $("canvasbox").style.display = "none";
    if (!meta.frames) $("canvaspanel").style.display = "none";
    return;
  }
  // as many columns as the panel fits (at least 8), so the canvas never scrolls sideways
  const COLS = Math.max(8, Math.floor(($("canvasbox").clientWidth - 4) / CW));
  const span = hi - lo + 1, rows = Math.ceil(span / COLS);
  if (cv.width !== COLS * CW + 2 || cv.height !== rows * CH + 2) { cv.width = COLS * CW + 2; cv.height = rows * CH + 2; }
  const x = cv.getContext("2d");
  // replay the fills up to the current call: position -> [token, call that set it]
  const state = new Map();
  let block = null;
  for (const i of fillCalls) {
    if (i > cur) break;
    const c = calls[i];
    c.positions.forEach((p, j) => {
      if (c.decisions[j] === "accepted") state.set(p, [c.tokens[j], i]); else state.delete(p);
    });
    ((c.detail || {}).remasked || []).forEach(p => state.delete(p));
    block = c.block;
  }
  const c = calls[cur], now = FILL.includes(c.kind);
  const proposed = new Map();
  if (now) c.positions.forEach((p, j) => { if (c.decisions[j] !== "accepted") proposed.set(p, [c.tokens[j]]); });
  x.fillStyle = "#fff"; x.fillRect(0, 0, cv.width, cv.height);
  x.font = "11px ui-monospace, Menlo, monospace"; x.textBaseline = "middle";
  for (let p = lo; p <= hi; p++) {
    const k = p - lo, cx = 1 + (k % COLS) * CW, cy = 1 + Math.floor(k / COLS) * CH;
    const s = state.get(p);
    let fill = "#e9ecef", text = "", ink = "#222";
    if (s) {
      const age = cur - s[1];
      fill = age === 0 && now ? "#f4a640" : age < 4 ? "#9fdcae" : "#d5f0dc";
      text = vis(piece(s[0]));
    } else if (proposed.has(p)) {
      fill = "#fbe1de"; text = vis(piece(proposed.get(p)[0])); ink = "#b06a63";
    } else if (p < 0) {
      fill = "#f3f4f6"; text = "prompt"; ink = "#aaa";
    }
    x.fillStyle = fill; x.fillRect(cx, cy, CW - 2, CH - 2);
    x.fillStyle = ink; x.fillText(short(text, 4), cx + 3, cy + CH / 2);
  }
  if (block) {  // the block being denoised
    x.strokeStyle = "#222"; x.lineWidth = 2;
    for (let p = Math.max(block[0], lo); p < Math.min(block[1], hi + 1); p++) {
      const k = p - lo;
      x.strokeRect(1 + (k % COLS) * CW, 1 + Math.floor(k / COLS) * CH, CW - 2, CH - 2);
    }
  }
  $("canvastitle").textContent = "Canvas: positions filled over calls (orange: this call; red: predicted, left masked)";
}

// ---- speech: the CTC best path per encoder frame, and the current call's token spans
function drawFrames(cur) {
  const fr = meta.frames, cv = $("frames");
  if (!fr) { $("framesbox").style.display = "none"; return; }
  const n = fr.labels.length, w = Math.max(2, Math.min(8, Math.floor(900 / Math.max(n, 1)))), H = 70;
  cv.width = n * w + 2; cv.height = H + 30;
  const x = cv.getContext("2d");
  x.fillStyle = "#fff"; x.fillRect(0, 0, cv.width, cv.height);
  x.font = "10px ui-monospace, Menlo, monospace";
  fr.labels.forEach((l, f) => {
    const blank = l === 0, h = fr.probs[f] * H;
    x.fillStyle = blank ? "#d8dde2" : "#5b8fd1";
    x.fillRect(1 + f * w, H - h, w - (w > 2 ? 1 : 0), h);
    if (!blank && (f === 0 || fr.labels[f - 1] !== l)) { x.fillStyle = "#222"; x.fillText(piece(l), 1 + f * w, H + 11); }
  });
  const spans = (calls[cur] && calls[cur].detail && calls[cur].detail.spans) || [];
  spans.forEach((sp, j) => {
    x.fillStyle = j % 2 ? "#f4a640" : "#2e9d4f";
    x.fillRect(1 + sp[0] * w, H + 16, (sp[1] - sp[0]) * w - 1, 5);
  });
  if (!fillCalls.length) $("canvastitle").textContent = "CTC best path per encoder frame";
}

// ---- acceptance per position, tokens per call, time split (over the whole trace)
function bars(box, title, labels, series, colors) {
  const W = 460, H = 130, n = labels.length, bw = Math.max(3, Math.min(36, Math.floor((W - 40) / Math.max(n, 1))));
  const max = Math.max(1, ...series[0]);
  const s = svg("svg", {width: Math.max(W, 40 + n * bw + 10), height: H + 34}, box);
  svg("text", {x: 0, y: 10, class: "axis"}, s, title);
  series.forEach((vals, si) => vals.forEach((v, i) => {
    const h = v / max * H;
    svg("rect", {x: 36 + i * bw, y: 16 + H - h, width: bw - 2, height: h, style: "fill:" + colors[si]}, s);
  }));
  labels.forEach((l, i) => {
    if (n < 24 || i % Math.ceil(n / 16) === 0) svg("text", {x: 36 + i * bw, y: H + 28, class: "axis"}, s, l);
  });
  svg("text", {x: 0, y: 24, class: "axis"}, s, String(max));
  return s;
}
function summaries() {
  const proposed = [], accepted = [];
  for (const c of calls) {
    if (!TREE.includes(c.kind) || !c.tokens.length) continue;
    const depth = [];
    c.parents.forEach((p, k) => depth.push(p < 0 ? 1 : depth[p] + 1));
    const D = Math.max(...depth);
    for (let d = 0; d < D; d++) {
      proposed[d] = (proposed[d] || 0) + 1;
      accepted[d] = (accepted[d] || 0) + (d < c.accepted.length ? 1 : 0);
    }
  }
  const box = $("accept");
  if (proposed.length) {
    bars(box, "steps that proposed (grey) / accepted (green) a token at draft position d", proposed.map((_, d) => String(d + 1)),
      [proposed, accepted.map(v => v || 0)], ["#c7d0d9", "#2e9d4f"]);
    const rates = proposed.map((p, d) => (d + 1) + ": " + Math.round(100 * (accepted[d] || 0) / p) + "%");
    el("div", "muted", "acceptance: " + rates.join(", "), box);
  } else if (fillCalls.length) {
    const un = {};
    fillCalls.forEach(i => { const k = calls[i].accepted.length; un[k] = (un[k] || 0) + 1; });
    const ks = Object.keys(un).map(Number).sort((a, b) => a - b);
    bars(box, "calls by positions unmasked per call", ks.map(String), [ks.map(k => un[k])], ["#f4a640"]);
  } else el("div", "muted", "no proposals in this trace (every token is the target's own)", box);
  const per = {};
  calls.forEach(c => { per[c.kept] = (per[c.kept] || 0) + 1; });
  const ks = Object.keys(per).map(Number).sort((a, b) => a - b);
  bars($("percall"), "calls by tokens kept", ks.map(String), [ks.map(k => per[k])], ["#5b8fd1"]);
  const tot = {draft: 0, verify: 0, other: 0};
  calls.forEach(c => { tot.draft += c.draft_s; tot.verify += c.verify_s; tot.other += c.other_s; });
  const all = tot.draft + tot.verify + tot.other || 1;
  const s = svg("svg", {width: 460, height: 26}, $("time"));
  const legend = el("div", "legend", undefined, $("time"));
  let x0 = 0;
  [["draft", "#9b6fd1"], ["verify", "#2e9d4f"], ["other", "#c7d0d9"]].forEach(([k, col]) => {
    const w = tot[k] / all * 440;
    svg("rect", {x: x0, y: 4, width: w, height: 18, style: "fill:" + col}, s);
    x0 += w;
    const item = el("span", "", k + " " + ms(tot[k]) + " (" + Math.round(100 * tot[k] / all) + "%)", legend);
    item.style.borderLeft = "12px solid " + col;
  });
}

// ---- stepping
const slider = $("slider");
slider.max = Math.max(0, N - 1);
let cur = -1, timer = null;
function go(i) {
  if (!N) { $("step").textContent = "no calls"; return; }
  i = Math.max(0, Math.min(N - 1, i | 0));
  if (i > cur) for (let k = Math.max(cur + 1, 0); k <= i; k++) groups[k].classList.remove("future");
  else for (let k = i + 1; k <= cur; k++) groups[k].classList.add("future");
  if (cur >= 0) groups[cur].classList.remove("current");
  groups[i].classList.add("current");
  cur = i;
  slider.value = i;
  $("step").textContent = "call " + (i + 1) + " / " + N;
  const c = calls[i];
  info(c, i); drawTree(c); drawDetail(c); drawCanvas(i); drawFrames(i);
  if (timer === null) groups[i].scrollIntoView({block: "nearest"});
  document.body.dataset.call = String(i);
}
function stop() { if (timer !== null) { clearInterval(timer); timer = null; $("play").textContent = "play"; } }
function play() {
  if (timer !== null) return stop();
  if (cur >= N - 1) go(0);
  $("play").textContent = "pause";
  timer = setInterval(() => { if (cur >= N - 1) stop(); else go(cur + 1); }, Number($("speed").value));
}
slider.addEventListener("input", () => { stop(); go(Number(slider.value)); });
$("first").onclick = () => { stop(); go(0); };
$("prev").onclick = () => { stop(); go(cur - 1); };
$("next").onclick = () => { stop(); go(cur + 1); };
$("last").onclick = () => { stop(); go(N - 1); };
$("play").onclick = play;
$("speed").onchange = () => { if (timer !== null) { stop(); play(); } };
document.addEventListener("keydown", e => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  if (e.key === "ArrowRight") { stop(); go(cur + 1); } else if (e.key === "ArrowLeft") { stop(); go(cur - 1); }
  else if (e.key === "Home") { stop(); go(0); } else if (e.key === "End") { stop(); go(N - 1); }
  else if (e.key === " ") { e.preventDefault(); play(); } else return;
});
summaries();
const start = /call=(\d+)/.exec(location.hash);
go(start ? Number(start[1]) - 1 : 0);
</script>
</body></html>
"""


def render(trace: Trace, title: str | None = None) -> str:
    """The page for one trace, as a string (write it to a .html file)."""
    data = trace.to_json().replace("<", "\\u003c")  # "<" only occurs inside JSON strings: never ends the <script>
    name = title or f"paragen trace: {trace.strategy}" + (f" on {trace.meta['model']}" if trace.meta.get("model") else "")
    return PAGE.replace("__TITLE__", html.escape(name)).replace("__DATA__", data)


def write(trace: Trace, path, title: str | None = None) -> None:
    from pathlib import Path

    Path(path).write_text(render(trace, title), encoding="utf-8")

