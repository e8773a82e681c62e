// The market dashboard: tasks, participants and the ledger, read from this node's public API.
// Everything is built with DOM calls (no HTML from data), nothing is fetched from another
// origin, and the ledger is checked in the browser by the ledger's own verifier compiled to
// WebAssembly (ledger.wasm); the ledger entries shown and a buyer's results are checked
// against that verified export, so a node's wrong answers are caught here. (The page comes
// from the node too: against a node that may serve another page, `market-ledger verify`.)
"use strict";

// ---------- small helpers ----------

/** An element with attributes and children (strings become text nodes). */
function h(tag, attrs, ...children) {
  const svg = ["svg", "polyline", "line", "circle", "text", "g", "title"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const short = (id) => (id ? String(id).slice(0, 12) + "…" : "");
const idLink = (route, id) => h("a", { href: `#/${route}/${id}`, class: "mono", title: id }, short(id));

async function api(path) {
  const r = await fetch(path, { headers: { accept: "application/json" } });
  const text = await r.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  if (!r.ok) {
    const msg = body && body.error ? `${body.error.code}: ${body.error.message}` : `${r.status}`;
    throw new Error(`${path}: ${msg}`);
  }
  return body;
}

function stateName(state) {
  return state && typeof state === "object" ? state.state : String(state);
}

function stateBadge(state) {
  const name = stateName(state);
  return h("span", { class: `state ${name}`, "data-state": name }, name);
}

function table(headers, rows, attrs) {
  return h("table", attrs || {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", typeof x === "object" ? x : {}, typeof x === "object" ? x.label : x)))),
    h("tbody", {}, rows));
}

function num(v) { return h("td", { class: "num" }, v === null || v === undefined ? "–" : String(v)); }

function fmtLoss(v) { return v === null || v === undefined ? "–" : Number(v).toPrecision(6); }

/** Replaces an element's children, skipping the absent ones (null, undefined, false). */
function put(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function setMain(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function failBox(err) {
  return h("div", { class: "error-box", role: "alert" }, String(err && err.message ? err.message : err));
}

// ---------- charts ----------

/**
 * A line chart of one or more series ([{label, points: [[x, y], ...]}]); y values that are
 * null are gaps. Drawn as SVG with axes and a legend; the numbers themselves are in a table
 * next to it, so the chart hides nothing.
 */
function lineChart(series, xLabel, yLabel, testId) {
  const W = 640, H = 260, L = 60, R = 16, T = 14, B = 36;
  const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
  const svg = h("svg", { class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${yLabel} by ${xLabel}`, "data-testid": testId });
  if (pts.length === 0) {
    svg.append(h("text", { x: L, y: H / 2 }, "no finite values to draw"));
    return svg;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.05 + 1e-6; y1 += Math.abs(y1) * 0.05 + 1e-6; }
  const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg.append(h("line", { class: "grid", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }));
    svg.append(h("text", { x: 4, y: sy(y) + 4 }, y.toPrecision(4)));
  }
  svg.append(h("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  svg.append(h("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  svg.append(h("text", { x: L, y: H - 8 }, String(x0)));
  svg.append(h("text", { x: W - R - 30, y: H - 8 }, String(x1)));
  svg.append(h("text", { x: W / 2 - 30, y: H - 8 }, xLabel));
  series.forEach((s, i) => {
    const c = i % 4;
    // Gaps (null) split the line.
    let run = [];
    const flush = () => {
      if (run.length > 1) svg.append(h("polyline", { class: `series series-${c}`, points: run.join(" ") }));
      run = [];
    };
    for (const [x, y] of s.points) {
      if (y === null || !Number.isFinite(y)) { flush(); continue; }
      run.push(`${sx(x).toFixed(1)},${sy(y).toFixed(1)}`);
      svg.append(h("circle", { class: `dot-${c}`, cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 3 },
        h("title", {}, `${s.label}: ${xLabel} ${x}, ${yLabel} ${y}`)));
    }
    flush();
  });
  const legend = h("div", { class: "legend" }, series.map((s, i) => h("span", {}, h("span", { class: `swatch swatch-${i % 4}` }), s.label)));
  return h("div", {}, svg, legend);
}

// ---------- the WebAssembly ledger verifier ----------

let verifierModule = null;

/** Instantiates ledger.wasm (once compiled, a fresh instance per call keeps memory small). */
async function verifier() {
  if (!verifierModule) {
    const r = await fetch("ledger.wasm");
    if (!r.ok) throw new Error(`ledger.wasm: ${r.status}`);
    verifierModule = await WebAssembly.compile(await r.arrayBuffer());
  }
  const instance = await WebAssembly.instantiate(verifierModule, {});
  return instance.exports;
}

/** Calls one of the module's functions (verify, statement, hash) on bytes; returns its JSON. */
async function callVerifier(fn, bytes) {
  const x = await verifier();
  const ptr = x.alloc(bytes.length);
  new Uint8Array(x.memory.buffer, ptr, bytes.length).set(bytes);
  const packed = BigInt.asUintN(64, x[fn](ptr, bytes.length));
  const at = Number(packed >> 32n), len = Number(packed & 0xffffffffn);
  const out = new Uint8Array(x.memory.buffer, at, len);
  return JSON.parse(new TextDecoder().decode(out));
}

const enc = new TextEncoder();

function joinBytes(...parts) {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** The node's export and signed head, fetched once per ledger height. */
let exportCache = null;

async function nodeExport() {
  const head = await api("/v1/ledger/head");
  if (exportCache && exportCache.head.body.seq === head.body.seq && exportCache.head.body.hash === head.body.hash) {
    return exportCache;
  }
  const r = await fetch("/v1/ledger/export");
  if (!r.ok) throw new Error(`/v1/ledger/export: ${r.status}`);
  const bytes = new Uint8Array(await r.arrayBuffer());
  exportCache = { head, bytes };
  return exportCache;
}

/**
 * The node's export, verified here against its signed head, and its entries parsed (by
 * sequence number): what the page checks the node's other answers against. Throws if the
 * export does not verify.
 */
async function verifiedLedger() {
  const cached = await nodeExport();
  if (!cached.verified) {
    const answer = await verifyExport(cached.bytes, cached.head);
    if (!answer.verified) throw new Error(`this node's ledger export does not verify: ${answer.error}`);
    cached.verified = answer;
    cached.entries = new TextDecoder().decode(cached.bytes).split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
  }
  return cached;
}

/**
 * What the verified ledger says a task's results are, read from the ledger alone (never from
 * the node's task view): `{pooled: true}` for a pooled task (its rounds' entries name it; its
 * merged weights are named by no release), or `{outputs}` from the single `release` of a plain
 * task (the accepted commitment it embeds); an error if there is none, or more than one.
 */
async function ledgerResult(taskId) {
  const { entries } = await verifiedLedger();
  const releases = entries.filter((e) => e.body.kind.release && e.body.kind.release.task_id === taskId && e.body.kind.release.commitment);
  const pooled = entries.some((e) => e.body.kind.pool_round && e.body.kind.pool_round.task_id === taskId)
    || releases.some((e) => e.body.kind.release.commitment.body.slot_round);
  if (pooled) return { pooled: true };
  if (releases.length !== 1) throw new Error(`the verified ledger has ${releases.length} releases of this task: nothing single to check its results against`);
  return { pooled: false, outputs: releases[0].body.kind.release.commitment.body.outputs };
}

/** JSON with keys sorted at every level: two parses of the same entry compare equal. */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
  return JSON.stringify(v);
}

/** Verifies an export (with the node's signed head, when given) in the browser. */
async function verifyExport(bytes, head) {
  const headLine = enc.encode((head ? JSON.stringify(head) : "") + "\n");
  return callVerifier("verify", joinBytes(headLine, bytes));
}

/** The accounts' statements, from one verification and replay of the node's export. */
async function verifiedStatements(accounts) {
  const { head, bytes } = await nodeExport();
  const prefix = enc.encode(JSON.stringify(head) + "\n" + accounts.join(" ") + "\n");
  return callVerifier("statement", joinBytes(prefix, bytes));
}

/** The operator key a visitor pinned (to notice a node that swapped its ledger). */
function pinnedOperator() { return localStorage.getItem("market.operator") || ""; }

function operatorNote(ledger) {
  const pinned = pinnedOperator();
  if (!pinned) return h("span", { class: "warn", "data-testid": "pin" }, "not pinned: pin this operator key on the ledger page to be told if the node ever serves another ledger");
  if (pinned === ledger) return h("span", { class: "ok", "data-testid": "pin" }, "the operator key you pinned");
  return h("span", { class: "bad", "data-testid": "pin" }, `NOT the operator key you pinned (${short(pinned)})`);
}

function verifyResult(answer, what) {
  if (answer.verified) {
    return h("div", { class: "result ok", "data-testid": "verify-result", "data-verified": "true", "data-entries": answer.entries },
      h("div", { class: "ok" }, `verified in this browser: ${what}`),
      h("dl", { class: "facts" },
        h("dt", {}, "entries"), h("dd", {}, String(answer.entries)),
        h("dt", {}, "operator (genesis)"), h("dd", { class: "mono" }, answer.ledger, " ", operatorNote(answer.ledger)),
        h("dt", {}, "head"), h("dd", { class: "mono" }, `${answer.head.seq} ${answer.head.hash}`),
        h("dt", {}, "credits in existence"), h("dd", {}, String(answer.supply)),
        h("dt", {}, "signed head checked"), h("dd", {}, answer.signed_head_seq === null || answer.signed_head_seq === undefined ? "no signed head given" : `yes, entry ${answer.signed_head_seq} is in the chain`)));
  }
  return h("div", { class: "result bad", "data-testid": "verify-result", "data-verified": "false", "data-seq": answer.seq ?? "" },
    h("div", { class: "bad" }, `NOT verified: ${what}`),
    answer.seq !== undefined ? h("div", {}, `first bad entry: ${answer.seq} (line ${answer.line})`) : null,
    h("div", { class: "mono" }, answer.error));
}

// ---------- signing requests in the browser (a buyer's own results) ----------

const EMPTY_BODY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
let buyerKey = null; // { account, key: CryptoKey }

function hexToBytes(hex) {
  if (!/^([0-9a-f]{2})*$/.test(hex)) throw new Error("not lowercase hex");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}
const bytesToHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** Reads a key file (`market-ed25519-secret-v1`); the secret stays in this page's memory. */
async function loadKeyFile(file) {
  if (file.size > 4096) throw new Error("that is not a key file (too large)");
  const k = JSON.parse(await file.text());
  if (k.kind !== "market-ed25519-secret-v1") throw new Error(`not a market key file (kind ${k.kind})`);
  const seed = hexToBytes(k.secret);
  if (seed.length !== 32) throw new Error("the secret is not 32 bytes");
  // PKCS#8 for an Ed25519 private key: a fixed prefix, then the 32-byte seed (RFC 8410).
  const pkcs8 = joinBytes(hexToBytes("302e020100300506032b657004220420"), seed);
  const key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
  return { account: k.account, key };
}

/** A GET signed as `market-node` signs it (spec: the x-market-* request signature). */
async function signedGet(path) {
  if (!buyerKey) throw new Error("load your key file first");
  // Only the two reads this page makes, for ids of the right form: the page never signs a
  // path a node's answer could bend.
  if (!/^\/v1\/(tasks\/[0-9a-f]{64}\/result|blobs\/[0-9a-f]{64})$/.test(path)) throw new Error(`refusing to sign ${path}`);
  const ts = Math.floor(Date.now() / 1000);
  const nonce = bytesToHex(crypto.getRandomValues(new Uint8Array(16)));
  const message = joinBytes(enc.encode("market/v1/HttpRequest"), new Uint8Array([0]),
    enc.encode(`GET\n${path}\n${EMPTY_BODY_BLAKE3}\n${ts}\n${nonce}`));
  const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, buyerKey.key, message));
  return fetch(path, {
    headers: {
      "x-market-account": buyerKey.account,
      "x-market-timestamp": String(ts),
      "x-market-nonce": nonce,
      "x-market-signature": bytesToHex(sig),
    },
  });
}

// ---------- pages ----------

async function tasksPage(params) {
  const state = params.get("state") || "";
  const after = params.get("after");
  const q = new URLSearchParams({ limit: "50" });
  if (state) q.set("state", state);
  if (after) q.set("after", after);
  const page = await api(`/v1/tasks?${q}`);
  const filter = h("select", { "aria-label": "state", onchange: (e) => { location.hash = e.target.value ? `#/tasks?state=${e.target.value}` : "#/tasks"; } },
    ["", "queued", "running", "auditing", "pooling", "settled", "rejected", "cancelled"].map((s) => {
      const o = h("option", { value: s }, s || "every state");
      if (s === state) o.selected = true;
      return o;
    }));
  const rows = page.tasks.map((t) => {
    const verdicts = t.attempts.flatMap((a) => a.verdicts);
    const failed = verdicts.filter((v) => !v.passed).length;
    return h("tr", { "data-task": t.id },
      h("td", {}, idLink("task", t.id)),
      h("td", {}, t.kind, t.pool && t.pool.part === "task" ? " (pooled)" : "", t.pool && t.pool.part === "slot_round" ? ` (slot ${t.pool.slot}, round ${t.pool.round})` : ""),
      h("td", {}, stateBadge(t.state)),
      num(t.price),
      h("td", {}, idLink("account", t.buyer)),
      num(t.attempts.length),
      h("td", {}, verdicts.length ? `${verdicts.length - failed} passed, ${failed} failed` : "–"),
      h("td", { class: "muted" }, t.waiting_for || ""));
  });
  setMain(
    h("h1", {}, "Tasks"),
    h("div", { class: "row" }, filter, h("span", { class: "muted" }, "in arrival order; updates live")),
    table(["task", "kind", "state", { label: "price", class: "num" }, "buyer", { label: "attempts", class: "num" }, "verdicts", "waiting for"], rows, { "data-testid": "tasks" }),
    page.next_after !== null ? h("p", {}, h("a", { href: `#/tasks?${new URLSearchParams({ ...(state ? { state } : {}), after: page.next_after })}` }, "more →")) : null);
}

function auditPlanCard(plan, title) {
  if (!plan) return null;
  return h("section", { class: "card", "data-testid": "audit-plan" },
    h("h3", {}, title),
    h("dl", { class: "facts" },
      h("dt", {}, "segments"), h("dd", {}, String(plan.segments)),
      h("dt", {}, "verifiers"), h("dd", {}, String(plan.verifiers)),
      h("dt", {}, "segments each re-executes"), h("dd", {}, String(plan.samples)),
      h("dt", {}, "cheat assumed"), h("dd", {}, `${plan.assumed_faked} of ${plan.segments} segments faked`),
      h("dt", {}, "detection probability"), h("dd", { "data-testid": "detection" }, `${(plan.detection_probability * 100).toFixed(4)} %`)));
}

function verdictTable(attempt, ai) {
  const rows = attempt.verdicts.map((v) => h("tr", { "data-verdict": v.verdict_id },
    h("td", {}, idLink("account", v.verifier)),
    h("td", { class: "mono", title: v.verdict_id }, short(v.verdict_id)),
    h("td", {}, v.passed ? h("span", { class: "ok" }, "pass") : h("span", { class: "bad" }, "fail")),
    h("td", { "data-field": "segments" }, (v.segments || []).join(", ")),
    h("td", { "data-field": "failed_segment" }, v.failed_segment ?? ""),
    h("td", { "data-field": "failed_step" }, v.failed_step ?? ""),
    h("td", { "data-field": "reason" }, v.reason || ""),
    h("td", { class: "muted detail" }, v.detail || "")));
  return table(["verifier", "verdict", "outcome", "segments re-executed", "failed segment", "failed step", "reason", "detail"], rows, { "data-testid": `verdicts-${ai}` });
}

function lossSection(t) {
  const runs = t.attempts.map((a, i) => ({ a, i })).filter(({ a }) => a.loss_trace && a.loss_trace.length);
  if (!runs.length) return null;
  const series = runs.map(({ a, i }) => ({
    label: `attempt ${i + 1} (${short(a.worker)}${a.accepted ? ", accepted" : a.result_failed ? ", failed its audit" : ""})`,
    points: a.loss_trace.map((l, s) => [s, l]),
  }));
  const rows = runs.flatMap(({ a, i }) => a.loss_trace.map((l, s) => h("tr", { "data-attempt": i, "data-segment": s, "data-loss": l === null ? "null" : String(l) },
    num(i + 1), num(s), h("td", { class: "num" }, fmtLoss(l)))));
  const stepsNote = runs.map(({ a, i }) => `attempt ${i + 1}: ${a.steps ?? "?"} steps in ${a.loss_trace.length} segments`).join("; ");
  return h("section", { class: "card" },
    h("h3", {}, "Training loss per segment (from each committed run's loss_trace)"),
    lineChart(series, "segment", "mean loss", "loss-chart"),
    h("p", { class: "muted" }, stepsNote),
    h("details", {}, h("summary", {}, "the numbers"),
      table([{ label: "attempt", class: "num" }, { label: "segment", class: "num" }, { label: "mean loss", class: "num" }], rows, { "data-testid": "loss-table" })));
}

function poolSection(t) {
  if (!t.pool || t.pool.part !== "task") return null;
  const p = t.pool;
  const history = p.history || [];
  const rows = history.map((r) => h("tr", { "data-round": r.round, "data-eval-loss": r.eval_loss ?? "null" },
    num(r.round), h("td", { class: "num" }, fmtLoss(r.eval_loss)),
    h("td", {}, r.slots.map((s) => h("span", {}, idLink("task", s.task), " by ", idLink("account", s.worker), " "))),
    h("td", { class: "mono", title: r.global }, short(r.global)),
    h("td", {}, h("a", { href: `#/ledger?from=${r.ledger_seq}` }, String(r.ledger_seq)))));
  const slots = (t.slots || []).map((s) => h("tr", {}, num(s.slot), h("td", {}, idLink("task", s.task)), h("td", {}, stateBadge(s.state)), h("td", {}, s.worker ? idLink("account", s.worker) : "–"), num(s.failed_runs)));
  return h("section", { class: "card", "data-testid": "pool" },
    h("h3", {}, `Pooled training: ${p.slots} workers × ${p.rounds} rounds (`, p.round >= p.rounds ? `all ${p.rounds} merged` : `running round ${p.round + 1} of ${p.rounds}`, ")"),
    history.some((r) => r.eval_loss !== null && r.eval_loss !== undefined)
      ? lineChart([{ label: "held-out loss of the merged parameters", points: history.map((r) => [r.round, r.eval_loss ?? null]) }], "round", "held-out loss", "eval-chart")
      : h("p", { class: "muted" }, "no held-out loss for this dataset"),
    table([{ label: "round", class: "num" }, { label: "held-out loss", class: "num" }, "slots merged (slot order)", "merged state", "ledger entry"], rows, { "data-testid": "rounds" }),
    slots.length ? h("div", {}, h("h3", {}, "Current round, slot by slot"),
      table([{ label: "slot", class: "num" }, "slot-round task", "state", "worker", { label: "failed runs", class: "num" }], slots)) : null);
}

function resultsSection(t) {
  const out = h("div", { "data-testid": "results" });
  const keyInput = h("input", { type: "file", accept: ".json,.key,application/json", "aria-label": "key file", "data-testid": "key-file" });
  const show = async () => {
    put(out, h("p", {}, "signing the request in this browser…"));
    try {
      if (!window.isSecureContext || !crypto.subtle) throw new Error("signing needs a secure page (https, or this node on localhost)");
      if (!keyInput.files.length) throw new Error("choose your key file first");
      buyerKey = await loadKeyFile(keyInput.files[0]);
      const r = await signedGet(`/v1/tasks/${t.id}/result`);
      const body = await r.json();
      if (!r.ok) throw new Error(`${r.status} ${body.error ? body.error.code + ": " + body.error.message : ""}`);
      // The outputs the verified ledger's release of this task names: anything else the node
      // lists is not offered. (A pooled task's merged weights have no such release yet.)
      const ledger = await ledgerResult(t.id);
      const pooled = ledger.pooled;
      const released = ledger.outputs;
      put(out, h("p", {}, `signed as ${short(buyerKey.account)}; ${body.outputs.length} output(s)`,
        pooled ? h("span", { class: "warn", "data-testid": "results-basis", "data-basis": "pooled" }, " (the verified ledger shows a pooled task: its merged weights are named by no release, so they are checked against their id only)")
          : h("span", { class: "ok", "data-testid": "results-basis", "data-basis": "release" }, " checked against the accepted commitment in the verified ledger")),
        table(["blob", "", "its text (from the checked bytes)"], body.outputs.map((id) => {
          const cell = h("td", {});
          const text = h("td", { class: "answer" });
          if (pooled || released.includes(id)) {
            cell.append(h("button", { class: "secondary", "data-blob": id, onclick: () => download(id, cell, text) }, "download and check"));
          } else {
            cell.append(h("span", { class: "bad", "data-check": "unreleased" }, "not in the ledger's accepted commitment: not offered"));
          }
          return h("tr", { "data-output": id }, h("td", { class: "mono" }, id), cell, text);
        }), { "data-testid": "outputs" }),
        !pooled && released.length !== body.outputs.length ? h("p", { class: "bad" }, `the ledger's accepted commitment names ${released.length} output(s); the node lists ${body.outputs.length}`) : null);
    } catch (e) {
      put(out, failBox(e));
    }
  };
  return h("section", { class: "card" },
    h("h3", {}, "Your results"),
    h("p", { class: "muted" }, "Choose your key file: this page signs the request itself and sends only the signature. The page is served by this node, so load your key only into a node you trust; otherwise use ", h("code", {}, "market-node task result"), "."),
    h("div", { class: "row" }, keyInput, h("button", { onclick: show, "data-testid": "show-results" }, "show my results")),
    out);
}

/** Downloads a result blob with a signed request, checks its blake3 against its id, offers it. */
async function download(id, cell, textCell) {
  put(cell, "downloading…");
  try {
    const r = await signedGet(`/v1/blobs/${id}`);
    if (!r.ok) throw new Error(`${r.status}`);
    const bytes = new Uint8Array(await r.arrayBuffer());
    const { blake3 } = await callVerifier("hash", bytes);
    if (blake3 !== id) {
      put(cell, h("span", { class: "bad", "data-check": "mismatch" }, `the bytes hash to ${short(blake3)}, not to this id: not offered`));
      return;
    }
    const url = URL.createObjectURL(new Blob([bytes]));
    put(cell, h("span", { class: "ok", "data-check": "match" }, `${bytes.length} bytes, blake3 matches `),
      h("a", { href: url, download: `${id}.bin` }, "save"));
    put(textCell, answerText(bytes));
  } catch (e) {
    put(cell, failBox(e));
  }
}

/**
 * What a checked output says, for people: an answer record's `text` (a llama item), or the
 * bytes as text (a gpt item); nothing for weights or other binary data.
 */
function answerText(bytes) {
  if (bytes.length > 1 << 20) return "";
  let text;
  try { text = new TextDecoder("utf-8", { fatal: true }).decode(bytes); } catch { return ""; }
  try {
    const record = JSON.parse(text);
    if (record && typeof record.text === "string") return record.text;
  } catch { /* not a record: the text itself */ }
  return /[\u0000-\u0008\u000e-\u001f]/.test(text) ? "" : text;
}

async function taskPage(id) {
  const t = await api(`/v1/tasks/${id}`);
  const attempts = t.attempts.map((a, i) => h("section", { class: "card", "data-testid": `attempt-${i}` },
    h("h3", {}, `Attempt ${i + 1}: `, idLink("account", a.worker), " ",
      a.accepted ? h("span", { class: "ok" }, "accepted") : a.result_failed ? h("span", { class: "bad" }, "failed its audit (worker slashed)") : h("span", { class: "muted" }, "not accepted")),
    h("dl", { class: "facts" },
      h("dt", {}, "commitment"), h("dd", { class: "mono" }, a.commitment_id || "none yet"),
      h("dt", {}, "recorded in the ledger"), h("dd", {}, a.commit_seq !== null && a.commit_seq !== undefined ? h("a", { href: `#/ledger?from=${a.commit_seq}` }, `entry ${a.commit_seq}`) : "–"),
      h("dt", {}, "run time"), h("dd", {}, a.run_millis ? `${(a.run_millis / 1000).toFixed(1)} s` : "–"),
      a.divergence_claim !== undefined ? [h("dt", {}, "divergence reported at step"), h("dd", {}, String(a.divergence_claim))] : null),
    a.plan ? auditPlanCard(a.plan, "This attempt's audit") : null,
    a.verdicts.length ? verdictTable(a, i) : h("p", { class: "muted" }, "no verdicts yet")));
  const running = t.state && t.state.state === "running" ? ` ${t.state.done}/${t.state.total}, loss ${fmtLoss(t.state.loss)}` : "";
  setMain(
    h("h1", {}, "Task ", h("span", { class: "mono" }, t.id)),
    h("section", { class: "card" }, h("dl", { class: "facts" },
      h("dt", {}, "state"), h("dd", {}, stateBadge(t.state), running, t.state && t.state.reason ? ` (${t.state.reason})` : ""),
      t.waiting_for ? [h("dt", {}, "waiting for"), h("dd", { "data-testid": "waiting-for" }, t.waiting_for)] : null,
      h("dt", {}, "kind"), h("dd", {}, t.kind),
      h("dt", {}, "buyer"), h("dd", {}, idLink("account", t.buyer)),
      h("dt", {}, "price in escrow"), h("dd", {}, `${t.price} credits (verifier fee ${t.verifier_fee} each)`),
      h("dt", {}, "needs"), h("dd", {}, `${(t.needs.memory_bytes / 2 ** 20).toFixed(1)} MiB memory, ${(t.needs.disk_bytes / 2 ** 20).toFixed(1)} MiB disk`),
      t.pool && t.pool.part === "slot_round" ? [h("dt", {}, "part of"), h("dd", {}, idLink("task", t.pool.parent), ` slot ${t.pool.slot}, round ${t.pool.round}`)] : null,
      h("dt", {}, "ledger entries"), h("dd", {}, t.ledger_seqs.map((s) => h("a", { href: `#/ledger?from=${s}` }, `${s} `))))),
    auditPlanCard(t.audit, "The audit promised at post"),
    poolSection(t),
    lossSection(t),
    h("h2", {}, "Attempts and verdicts"),
    attempts.length ? attempts : h("p", { class: "muted" }, t.pool && t.pool.part === "task" ? "a pooled task runs as slot-round tasks (above, round by round): each is committed, audited and paid on its own" : "no attempt yet"),
    // A slot-round's weights are its pooled task's business: the buyer reads the pooled
    // task's merged result.
    (t.state && t.state.state === "settled" && !t.pool) || (t.pool && t.pool.part === "task") ? resultsSection(t) : null);
}

async function participantsPage() {
  const [workers, verifiers] = await Promise.all([api("/v1/workers"), api("/v1/verifiers")]);
  const earned = new Map();
  const row = (p, role) => {
    const cell = h("td", { class: "num", "data-earned": p.account }, "…");
    earned.set(p.account, cell);
    return h("tr", { "data-account": p.account, "data-role": role },
      h("td", {}, idLink("account", p.account)),
      h("td", {}, role),
      h("td", {}, p.profiles.join(", ")),
      h("td", {}, p.busy ? "busy" : "idle"),
      num(p.staked), num(p.reputation),
      role === "worker" ? num(`${p.stats.tasks_done} / ${p.stats.tasks_failed}`) : num(`${p.stats.audits} (${p.stats.audits_passed} pass, ${p.stats.audits_failed} fail)`),
      num(p.stats.slashed),
      cell);
  };
  setMain(h("h1", {}, "Participants"),
    h("p", { class: "muted" }, "Earnings are each participant's statement, computed in this browser from the verified ledger export (open one for every entry)."),
    table(["account", "role", "profiles", "now", { label: "stake", class: "num" }, { label: "reputation", class: "num" }, { label: "tasks done / failed, or audits", class: "num" }, { label: "slashed", class: "num" }, { label: "earned (verified)", class: "num" }],
      [...workers.map((p) => row(p, "worker")), ...verifiers.map((p) => row(p, "verifier"))], { "data-testid": "participants" }));
  if (!earned.size) return;
  // Every participant's statement from one pass over the verified export.
  const cells = [...earned.values()];
  try {
    const s = await verifiedStatements([...earned.keys()]);
    cells.forEach((cell, i) => {
      cell.textContent = s.verified ? String(s.statements[i].totals.earned) : "not verified";
      if (!s.verified) cell.className = "num bad";
    });
  } catch (e) {
    for (const cell of cells) {
      cell.textContent = "error";
      cell.title = String(e.message);
    }
  }
}

async function accountPage(account) {
  // The node's view is comparable with the statement only at the statement's ledger height:
  // read both until the head stays put across a read (three tries; a node whose head moves
  // every time is told apart from one whose ledger moved once).
  let view, all, now, stable = false;
  for (let tries = 0; tries < 3 && !stable; tries++) {
    [view, all] = await Promise.all([api(`/v1/accounts/${account}`).catch((e) => ({ error: e })), verifiedStatements([account])]);
    if (!all.verified) break;
    now = await api("/v1/ledger/head");
    stable = now.body.seq === all.statements[0].statement.head.seq;
  }
  const s = all.verified ? { verified: true, ...all.statements[0] } : all;
  const facts = view.error ? failBox(view.error) : h("dl", { class: "facts" },
    h("dt", {}, "balance"), h("dd", { "data-testid": "api-balance" }, String(view.balance)),
    h("dt", {}, "staked"), h("dd", {}, String(view.staked)),
    h("dt", {}, "reputation"), h("dd", {}, String(view.reputation)),
    view.escrowed !== undefined ? [h("dt", {}, "in escrow"), h("dd", {}, String(view.escrowed))] : null);
  let statement;
  if (!s.verified) {
    statement = verifyResult(s, "this node's export");
  } else {
    const st = s.statement;
    const agree = !view.error && st.balance === view.balance;
    statement = h("div", {},
      h("p", {}, h("span", { class: "ok" }, "verified in this browser"), ` against the node's signed head (entry ${st.signed_head_seq}); ledger operator `, h("span", { class: "mono" }, short(st.ledger)), " ", operatorNote(st.ledger)),
      h("p", { "data-testid": "agreement", "data-agree": String(agree) }, agree
        ? h("span", { class: "ok" }, `the statement's balance (${st.balance}) is the node's`)
        : stable ? h("span", { class: "bad" }, `the statement's balance (${st.balance}) differs from the node's (${view.balance}) at the same ledger entry ${st.head.seq}`)
          : h("span", { class: "bad" }, `could not compare the balances: the node's head moved on at each of three reads (last: entry ${st.head.seq} → ${now.body.seq})`)),
      h("dl", { class: "facts", "data-testid": "totals" },
        Object.entries(s.totals).flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-total": k }, String(v))])),
      table([{ label: "entry", class: "num" }, "kind", { label: "balance", class: "num" }, { label: "stake", class: "num" }, { label: "escrow", class: "num" }, { label: "rep", class: "num" }, "task", "cause", "evidence"],
        st.lines.map((l) => h("tr", { "data-seq": l.seq },
          h("td", { class: "num" }, h("a", { href: `#/ledger?from=${l.seq}` }, String(l.seq))),
          h("td", {}, l.kind),
          num(l.balance || ""), num(l.stake || ""), num(l.escrow || ""), num(l.reputation || ""),
          h("td", {}, l.task ? idLink("task", l.task) : ""),
          h("td", {}, l.cause),
          h("td", { class: "mono", title: l.evidence || "" }, l.evidence ? short(l.evidence) : ""))), { "data-testid": "statement" }));
  }
  setMain(h("h1", {}, "Account ", h("span", { class: "mono" }, account)),
    h("section", { class: "card" }, h("h3", {}, "What the node says"), facts),
    h("section", { class: "card" }, h("h3", {}, "Statement: every ledger entry that touched this account"), statement));
}

async function ledgerPage(params) {
  const head = await api("/v1/ledger/head");
  // A page of 50 ending at the head unless `from` (a whole number, at most the head) says where.
  const asked = params.get("from");
  const from = asked !== null && /^[0-9]{1,15}$/.test(asked) ? Math.min(Number(asked), head.body.seq) : Math.max(0, head.body.seq - 49);
  const page = await api(`/v1/ledger/entries?from=${from}&limit=50`);
  const result = h("div", {});
  const fileResult = h("div", {});
  const pin = h("input", { type: "text", value: pinnedOperator(), placeholder: "operator key (64 hex digits)", "aria-label": "pinned operator key", "data-testid": "pin-input" });
  const checks = [];
  const verifyNode = async (button) => {
    button.disabled = true;
    put(result, h("p", {}, "fetching the export and verifying it here…"));
    try {
      const { head: signed, bytes } = await nodeExport();
      const answer = await verifyExport(bytes, signed);
      put(result, verifyResult(answer, `this node's export, against its signed head ${signed.body.seq}`));
      if (answer.verified) {
        // The table below came from /v1/ledger/entries: each row against the verified export.
        const { entries } = await verifiedLedger();
        // Row i must be entry from + i of the verified export, exactly: a forged, repeated or
        // misplaced row is flagged.
        checks.forEach(({ entry, cell }, i) => {
          const seq = from + i;
          const same = entry.body.seq === seq && entries[seq] !== undefined && canonical(entries[seq]) === canonical(entry);
          put(cell, same ? h("span", { class: "ok", "data-check": "same" }, "✓ as verified")
            : h("span", { class: "bad", "data-check": "differs" }, "✗ not the verified entry"));
        });
      }
    } catch (e) {
      put(result, failBox(e));
    }
    button.disabled = false;
  };
  const fileInput = h("input", {
    type: "file", accept: ".jsonl,.json,.txt,application/x-ndjson", "aria-label": "export file", "data-testid": "export-file",
    onchange: async (e) => {
      const f = e.target.files[0];
      if (!f) return;
      put(fileResult, h("p", {}, `verifying ${f.name} here…`));
      try {
        const bytes = new Uint8Array(await f.arrayBuffer());
        const answer = await verifyExport(bytes, null);
        // A file comes with no signed head, so a shortened copy verifies too: say where it
        // ends against this node's signed head.
        const ends = answer.verified ? (answer.head.seq === head.body.seq && answer.head.hash === head.body.hash
          ? h("p", { class: "ok" }, `it ends at this node's signed head (entry ${head.body.seq}): the node's whole ledger`)
          : h("p", { class: "warn" }, `it ends at entry ${answer.head.seq}; this node's signed head is entry ${head.body.seq} (${short(head.body.hash)}): a file has no signed head, and a shortened copy verifies too`)) : null;
        put(fileResult, verifyResult(answer, `the file ${f.name}`), ends);
      } catch (err) {
        put(fileResult, failBox(err));
      }
    },
  });
  const rows = page.entries.map((e) => {
    const kind = Object.keys(e.body.kind)[0];
    const cell = h("td", { class: "muted" }, "verify above to check");
    checks.push({ entry: e, cell });
    return h("tr", { "data-seq": e.body.seq },
      num(e.body.seq), h("td", {}, kind), h("td", { class: "mono" }, e.body.key), cell,
      h("td", {}, h("details", {}, h("summary", {}, "entry"), h("pre", { class: "json" }, JSON.stringify(e, null, 2)))));
  });
  const prev = from > 0 ? h("a", { href: `#/ledger?from=${Math.max(0, from - 50)}` }, "← earlier") : null;
  const next = from + 50 <= head.body.seq ? h("a", { href: `#/ledger?from=${from + 50}` }, "later →") : null;
  setMain(h("h1", {}, "Ledger"),
    h("section", { class: "card", "data-testid": "head" },
      h("h3", {}, "Signed head"),
      h("dl", { class: "facts" },
        h("dt", {}, "entries"), h("dd", { "data-testid": "head-entries" }, String(head.body.seq + 1)),
        h("dt", {}, "head hash"), h("dd", { class: "mono" }, head.body.hash),
        h("dt", {}, "operator"), h("dd", { class: "mono" }, head.body.ledger, " ", operatorNote(head.body.ledger)),
        h("dt", {}, "signature"), h("dd", { class: "mono" }, short(head.signature)))),
    h("section", { class: "card" },
      h("h3", {}, "Verify it yourself, in this browser"),
      h("p", { class: "muted" }, "Checks every entry's signature, its link to the one before, and replays every credit movement, with the ledger's own verifier compiled to WebAssembly; then checks that the node's signed head is in the chain, and the entries below against it. The verifier is rebuilt byte for byte from source by anyone (scripts/build-dashboard-wasm.sh); against a node you do not trust, run market-ledger verify on its export, since this page comes from the node too."),
      h("div", { class: "row" }, h("button", { "data-testid": "verify-node", onclick: (e) => verifyNode(e.target) }, "verify this node's export")),
      result,
      h("div", { class: "row" }, h("label", {}, "or verify an export file: ", fileInput)),
      fileResult,
      h("div", { class: "row" }, h("label", {}, "pin the operator key: ", pin),
        h("button", { class: "secondary", onclick: () => { localStorage.setItem("market.operator", pin.value.trim()); route(); } }, "pin"))),
    h("h2", {}, `Entries ${from} to ${from + page.entries.length - 1}`),
    h("div", { class: "row" }, prev, next),
    table([{ label: "seq", class: "num" }, "kind", "operation key", "against the verified export", ""], rows, { "data-testid": "entries" }));
}

// ---------- routing and live updates ----------

let current = { name: "", arg: "" };

async function route() {
  const raw = location.hash.replace(/^#\/?/, "") || "tasks";
  const [path, query] = raw.split("?");
  const [name, arg] = path.split("/");
  const params = new URLSearchParams(query || "");
  current = { name, arg };
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.dataset.nav === name || (name === "task" && a.dataset.nav === "tasks") || (name === "account" && a.dataset.nav === "participants"));
  }
  try {
    if (name === "tasks") await tasksPage(params);
    else if (name === "task" && /^[0-9a-f]{64}$/.test(arg)) await taskPage(arg);
    else if (name === "participants") await participantsPage();
    else if (name === "account" && /^[0-9a-f]{64}$/.test(arg)) await accountPage(arg);
    else if (name === "ledger") await ledgerPage(params);
    else setMain(h("h1", {}, "Not found"), h("p", {}, "No such page: ", h("a", { href: "#/tasks" }, "the tasks")));
    document.body.dataset.page = name;
    document.body.dataset.ready = "true";
  } catch (e) {
    setMain(failBox(e));
    document.body.dataset.ready = "true";
  }
}

/** Re-draws a page that shows a task whose state changed (at most every half second). */
let redraw = null;
function onTaskEvent(ev) {
  let msg;
  try { msg = JSON.parse(ev.data); } catch { return; }
  const shows = current.name === "tasks" || (current.name === "task" && current.arg === msg.task);
  if (!shows || redraw) return;
  redraw = setTimeout(() => { redraw = null; route(); }, 500);
}

function live() {
  const badge = document.getElementById("live");
  const source = new EventSource("/v1/events");
  source.addEventListener("open", () => { badge.textContent = "live"; badge.className = "live on"; });
  source.addEventListener("error", () => { badge.textContent = "reconnecting"; badge.className = "live off"; });
  source.addEventListener("task", onTaskEvent);
}

window.addEventListener("hashchange", () => { document.body.dataset.ready = "false"; route(); });
window.addEventListener("DOMContentLoaded", () => { live(); route(); });
