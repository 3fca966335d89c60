// The auditor's console: the page's logic. Verification itself runs in a Web Worker (worker.js) on the
// WebAssembly build of anchorlog-core; this file reads the auditor's inputs, talks to the appliance in live
// mode, and shows what was checked. Nothing here decides validity: only the verifier's answer does.
/* global ANCHORLOG_ENGINE */
"use strict";

const $ = (id) => document.getElementById(id);
const PIN_STORAGE = "anchorlog.console.pinned-key";

// ---------------------------------------------------------------------------------------------------------
// The verifier worker
// ---------------------------------------------------------------------------------------------------------

const engine = {
  worker: null,
  next: 1,
  pending: new Map(),
  ready: null,
};

function base64Bytes(b64) {
  const text = atob(b64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

/**
 * How many checking workers the verifier starts for bundles: one per logical core, at least 2 (the
 * coordinator's own folding is light, so on 2 cores 2 checkers keep both busy; docs/PERFORMANCE.md). The page
 * address can set it, `?checkers=K` (0: everything on the one verifier worker), to measure.
 */
function checkingWorkers() {
  const asked = new URLSearchParams(location.search).get("checkers");
  if (asked !== null && /^[0-9]+$/.test(asked)) return Math.min(parseInt(asked, 10), 16);
  return Math.max(2, Math.min(navigator.hardwareConcurrency || 2, 16));
}

/** Starts the worker from the inlined engine and resolves once the WebAssembly module is instantiated. */
function startEngine() {
  const blob = new Blob([ANCHORLOG_ENGINE.worker], { type: "text/javascript" });
  engine.worker = new Worker(URL.createObjectURL(blob));
  engine.worker.onmessage = (event) => {
    const m = event.data;
    const waiting = engine.pending.get(m.id);
    if (!waiting) return;
    if (m.type === "progress") {
      if (waiting.onProgress) waiting.onProgress(m);
      return;
    }
    engine.pending.delete(m.id);
    waiting.resolve(m.type === "ready" ? m : m.result);
  };
  engine.worker.onerror = (e) => {
    for (const [, w] of engine.pending) w.resolve({ ok: false, input_error: `the verifier failed: ${e.message}` });
    engine.pending.clear();
  };
  engine.ready = ask({
    type: "init",
    wasm: base64Bytes(ANCHORLOG_ENGINE.wasm),
    source: ANCHORLOG_ENGINE.worker,
    checkers: checkingWorkers(),
  });
  return engine.ready;
}

/** Sends a request to the worker; resolves with its answer. */
function ask(message, onProgress) {
  const id = engine.next++;
  return new Promise((resolve) => {
    engine.pending.set(id, { resolve, onProgress });
    engine.worker.postMessage({ ...message, id });
  });
}

// ---------------------------------------------------------------------------------------------------------
// Showing results
// ---------------------------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function plural(n, word) {
  return `${Number(n).toLocaleString("en")} ${word}${n === 1 ? "" : "s"}`;
}

function msToIso(ms) {
  return ms === null || ms === undefined ? "—" : new Date(ms).toISOString();
}

/** The lines saying what a successful check covered, and what it did not; with `keyring`, the keys were the
 * log's nodes' keys, any of which may sign any head. */
function checkedLines(kind, r, keyring) {
  const lines = [];
  const notChecked = [];
  let signers = [];
  if (kind === "receipt") {
    lines.push(`Event seq ${r.seq}: its entry${r.erased ? " (payload erased, by a recorded erasure)" : " and payload"} hash to the leaf the log committed to.`);
    lines.push(`Inclusion: the leaf is in the Merkle tree of size ${r.tree_size.toLocaleString("en")} that head ${r.height} commits to.`);
    lines.push(`Signature: head ${r.height} is signed by key ${r.key_id}, origin "${r.origin}".`);
    if (r.rotations && r.rotations.length) lines.push(`Key rotations followed from the given key: ${r.rotations.length}.`);
    timestampLines(r.timestamp, lines, notChecked);
    witnessLines(r.witnesses, lines, notChecked);
  } else if (kind === "bundle") {
    const w = r.report;
    const m = r.manifest;
    const range = m.end_seq > m.first_seq ? ` (seq ${m.first_seq} to ${m.end_seq - 1})` : "";
    lines.push(`Events: ${plural(w.events, "event")}${range}, every entry and payload re-hashed${w.erased ? `, ${plural(w.erased, "erased payload")} matched to erasure records` : ""}.`);
    lines.push(`Heads ${m.from_height} to ${m.to_height}${m.anchor ? ", from an anchor head" : ""}: the bundle's manifest, checked against the heads.`);
    lines.push(`Merkle tree: every head's root recomputed from the events; consistency from the anchor head on.`);
    lines.push(`Chain: ${plural(w.heads, "head")}, each signed, each committing to the one before; origin "${w.origin}".`);
    signers = w.signers || [];
    const keyCount = new Set(signers.map((s) => s.key_id)).size;
    if (keyring && keyCount > 1) {
      const rotations = w.rotations.length ? `, ${plural(w.rotations.length, "key rotation")} followed` : "";
      lines.push(`Signing keys: ${keyCount} keys of the keyring, each head signed by a key that may sign it${rotations}.`);
    } else {
      lines.push(`Signing key: ${w.key_id}${w.current_key_id !== w.key_id ? ` → ${w.current_key_id} (${plural(w.rotations.length, "rotation")})` : ""}.`);
    }
    lines.push(`Sealed from ${msToIso(w.first_sealed_ms)} to ${msToIso(w.last_sealed_ms)}.`);
    if (w.unsealed_events) lines.push(`${plural(w.unsealed_events, "event")} after the last head: stored, not yet covered by a signature.`);
    timestampLines(r.timestamps, lines, notChecked, r.tokens_present);
    witnessLines(r.witnesses, lines, notChecked, r.notes_present);
  } else if (kind === "head") {
    lines.push(`Signature: head ${r.height} (tree size ${r.tree_size.toLocaleString("en")}) is signed by key ${r.key_id}, origin "${r.origin}".`);
    timestampLines(r.timestamp, lines, notChecked);
    witnessLines(r.witnesses, lines, notChecked);
  }
  return { lines, notChecked, signers };
}

function timestampLines(t, lines, notChecked, present) {
  if (t) {
    const span = t.first_gen_time ? `, genTime ${t.first_gen_time}${t.last_gen_time !== t.first_gen_time ? ` to ${t.last_gen_time}` : ""}` : "";
    lines.push(`RFC 3161 tokens: ${plural(t.verified, "token")} verified against the TSA CA${span}${t.missing_count ? `; ${plural(t.missing_count, "head")} without a token` : ""}.`);
  } else {
    notChecked.push(`RFC 3161 tokens${present !== undefined ? ` (${present} present)` : ""}: no TSA CA certificate given.`);
  }
}

function witnessLines(w, lines, notChecked, present) {
  if (w) {
    const by = (w.newest_cosigned_by || []).map((c) => c.witness).join(", ") || "—";
    lines.push(`Witness cosignatures: quorum ${w.quorum} met at height ${w.newest_height}, cosigned by ${by}.`);
  } else {
    notChecked.push(`Witness cosignatures${present !== undefined ? ` (${present} cosigned note(s) present)` : ""}: no witness keys given.`);
  }
}

/** Renders a verifier answer into `target` (a section with aria-live); `keyring` as for checkedLines. */
function showResult(target, kind, name, result, keyring) {
  target.replaceChildren();
  target.hidden = false;
  target.className = "result " + (result.ok ? "ok" : "bad");
  target.dataset.outcome = result.ok ? "ok" : result.input_error ? "input-error" : "invalid";
  if (result.ok) {
    target.append(el("h3", {}, `Verified: ${name}`));
    const { lines, notChecked, signers } = checkedLines(kind, result.report, keyring);
    target.append(el("p", {}, "Checked, in this browser:"));
    target.append(el("ul", { id: "checked" }, ...lines.map((l) => el("li", {}, l))));
    if (signers.length > 1) {
      // Where the heads passed from one key to another (a takeover, or a rotation): the auditor sees each.
      const heads = (s) => (s.from_height === s.to_height ? `head ${s.from_height}` : `heads ${s.from_height} to ${s.to_height}`);
      target.append(el("p", {}, "Which key signed which heads:"));
      target.append(el("ul", { id: "signers" }, ...signers.map((s) => el("li", {}, `${heads(s)}: key ${s.key_id}`))));
    }
    if (notChecked.length) {
      target.append(el("p", {}, "Not checked:"));
      target.append(el("ul", { id: "not-checked" }, ...notChecked.map((l) => el("li", {}, l))));
    }
    if (result.elapsed_ms !== undefined && result.report.report) {
      const rate = Math.round(result.report.report.events / (result.elapsed_ms / 1000));
      target.append(el("p", { id: "rate" }, `${plural(result.report.report.events, "event")} in ${(result.elapsed_ms / 1000).toFixed(2)} s (${rate.toLocaleString("en")} events/s).`));
      target.dataset.eventsPerSecond = String(rate);
      if (result.timing) target.dataset.timing = JSON.stringify(result.timing);
    }
  } else if (result.input_error) {
    target.append(el("h3", {}, "Could not verify"));
    target.append(el("p", { id: "failure" }, result.input_error));
  } else {
    const f = result.failure;
    const where = f.at !== null && f.at !== undefined ? ` at ${f.kind} ${f.at}` : "";
    target.append(el("h3", {}, `FAILED${where}: ${name}`));
    target.append(el("p", { id: "failure" }, f.message));
    target.dataset.failureKind = f.kind || "";
    target.dataset.failureAt = f.at === null || f.at === undefined ? "" : String(f.at);
  }
  target.focus();
}

// ---------------------------------------------------------------------------------------------------------
// Offline mode: files the auditor picks or drops
// ---------------------------------------------------------------------------------------------------------

async function fileText(input) {
  const f = input.files && input.files[0];
  return f ? f.text() : "";
}

/** The keyring: the PEM blocks of every file picked and of the text pasted, one after another. */
async function keyringText() {
  const files = await Promise.all([...($("keyring-file").files || [])].map((f) => f.text()));
  return [...files, $("keyring-text").value].filter((t) => t.includes("-----BEGIN")).join("\n");
}

async function trustOptions() {
  const options = {};
  const origin = $("origin").value.trim();
  if (origin) options.origin = origin;
  const tsa = await fileText($("tsa-file"));
  if (tsa) {
    options.tsa_ca_pem = tsa;
    options.require_timestamps = $("require-timestamps").checked;
  }
  const witnesses = $("witnesses").value.split("\n").map((l) => l.trim()).filter(Boolean);
  if (witnesses.length) {
    options.witnesses = witnesses;
    const q = parseInt($("quorum").value, 10);
    if (q > 0) options.witness_quorum = q;
  }
  return options;
}

async function verifyOffline(event) {
  event.preventDefault();
  const target = $("result");
  const evidence = $("evidence").files[0];
  const signer = (await fileText($("key-file"))) || $("key-text").value;
  const keyring = await keyringText();
  // As `anchorlog verify --key … --keyring …`: a signer key given beside a keyring joins it.
  const keys = [signer, keyring].filter((t) => t.includes("-----BEGIN")).join("\n");
  if (!evidence) {
    showResult(target, "", "", { ok: false, input_error: "Choose or drop a receipt (.json) or a bundle (.tar) first." });
    return;
  }
  if (!keys.includes("-----BEGIN")) {
    showResult(target, "", evidence.name, { ok: false, input_error: "Give the signer's public key or certificate (PEM), or the keyring of the log's nodes: the evidence is checked against them, never against a key it carries." });
    return;
  }
  const options = await trustOptions();
  if (keyring) options.keyring = true;
  const button = $("verify-button");
  button.disabled = true;
  target.hidden = true;
  await engine.ready;
  try {
    if (await isTar(evidence)) {
      const bar = $("progress-bar");
      const text = $("progress-text");
      $("offline-progress").hidden = false;
      bar.value = 0;
      const result = await ask({ type: "bundle", file: evidence, keys, options }, (p) => {
        bar.value = p.size ? p.bytes / p.size : 0;
        text.textContent = `${plural(p.events, "event")} verified`;
      });
      bar.value = 1;
      showResult(target, "bundle", evidence.name, result, Boolean(keyring));
    } else {
      const receipt = await evidence.text();
      showResult(target, "receipt", evidence.name, await ask({ type: "receipt", receipt, keys, options }), Boolean(keyring));
    }
  } finally {
    button.disabled = false;
  }
}

/** A tar archive has "ustar" at offset 257; a receipt is JSON text. */
async function isTar(file) {
  const head = new Uint8Array(await file.slice(257, 262).arrayBuffer());
  return String.fromCharCode(...head) === "ustar";
}

function setUpDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) $("evidence").files = e.dataTransfer.files;
  });
}

// ---------------------------------------------------------------------------------------------------------
// Live mode: served by the appliance (same origin, the auditor's client certificate)
// ---------------------------------------------------------------------------------------------------------

const live = { cursor: null, query: null };

function pinnedKey() {
  try {
    return localStorage.getItem(PIN_STORAGE) || "";
  } catch {
    return "";
  }
}

/** The options of a live check: several pinned keys are the log's nodes' keys, a keyring (docs/FORMAT.md §20). */
function liveOptions(key) {
  return (key.match(/-----BEGIN /g) || []).length > 1 ? { keyring: true } : {};
}

function showPinned() {
  const key = pinnedKey();
  const blocks = (key.match(/-----BEGIN /g) || []).length;
  $("pinned").textContent = blocks > 1
    ? `Pinned: a keyring of ${blocks} keys.`
    : key
    ? `Pinned: ${key.split("\n").filter((l) => !l.startsWith("-----")).join("").slice(0, 40)}… (${key.includes("CERTIFICATE") ? "certificate" : "public key"})`
    : "No key pinned: pin the appliance's public key (from your records, not from this server) to verify what it sends.";
}

async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  let body;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    // The appliance's errors are JSON with a stable code and a message saying what to do.
    const code = body && body.code ? body.code : response.status;
    const message = body && body.message ? body.message : response.statusText;
    throw new Error(`${code}: ${message}`);
  }
  return body;
}

function ageText(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

async function refreshHead() {
  const dl = $("head");
  dl.replaceChildren();
  const add = (k, v, cls) => dl.append(el("dt", {}, k), el("dd", cls ? { class: cls } : {}, v));
  let head;
  try {
    head = await getJson("/v1/heads/latest");
  } catch (e) {
    add("Error", e.message, "status-bad");
    return;
  }
  add("Height", head.height);
  add("Tree size", head.tree_size.toLocaleString("en"));
  add("Sealed", `${head.sealed_at} (${ageText(head.sealed_at)})`);
  add("Key id", head.key_id);
  // The server's word until verified: the page checks the head's signature below; tokens and cosignatures
  // are checked when a receipt or bundle is verified with the TSA CA and witness keys (offline tab).
  add("RFC 3161 token", head.timestamp ? `present, genTime ${head.timestamp_gen_time} (as the appliance reports it)` : "not yet");
  add("Cosignatures", head.cosignatures.length ? `${head.cosignatures.map((c) => c.witness).join(", ")} (as the appliance reports them)` : "none yet");
  const key = pinnedKey();
  if (!key) {
    add("Signature", "not verified: no key pinned", "status-bad");
    return;
  }
  await engine.ready;
  const r = await ask({ type: "head", head: JSON.stringify(head), keys: key, options: liveOptions(key) });
  const verdict = r.ok
    ? liveOptions(key).keyring
      ? `verified in this browser: signed by ${r.report.key_id}, a key of the pinned keyring`
      : `verified in this browser against the pinned key (${r.report.key_id})`
    : `NOT VALID: ${r.input_error || r.failure.message}`;
  add("Signature", verdict, r.ok ? "status-ok" : "status-bad");
  dl.dataset.verdict = r.ok ? "ok" : "bad";
}

async function search(event, cursor) {
  if (event) event.preventDefault();
  let params = new URLSearchParams();
  if (cursor) {
    // The next page is the same query from the cursor on (the appliance checks the cursor was made for it).
    params = new URLSearchParams(live.query);
    params.set("cursor", cursor);
  } else {
    for (const input of $("search-form").querySelectorAll("input, select")) {
      if (input.value.trim()) params.set(input.name, input.value.trim());
    }
    live.query = params;
  }
  const status = $("search-status");
  status.textContent = "Searching…";
  let answer;
  try {
    answer = await getJson(`/v1/events?${params}`);
  } catch (e) {
    status.textContent = e.message;
    return;
  }
  const body = $("hits").querySelector("tbody");
  if (!cursor) body.replaceChildren();
  for (const hit of answer.events) {
    const f = hit.fields || {};
    const cell = el("td", { id: `receipt-${hit.seq}` });
    const button = el("button", { type: "button", class: "secondary", "aria-label": `Get and verify the receipt of event ${hit.seq}` }, "Get receipt");
    button.addEventListener("click", () => verifyLiveReceipt(hit.seq, cell));
    cell.append(button);
    const when = f.event_time_ms !== null && f.event_time_ms !== undefined ? msToIso(f.event_time_ms) : "";
    const actor = [f.actor_id, f.actor_name].filter(Boolean).join(" / ");
    body.append(el("tr", {}, el("td", {}, hit.seq), el("td", {}, when), el("td", {}, f.event_type || ""),
      el("td", {}, actor), el("td", {}, f.outcome || ""), el("td", {}, f.source || ""), cell));
  }
  $("hits").hidden = body.children.length === 0;
  live.cursor = answer.next_cursor;
  $("next-page").hidden = !live.cursor;
  status.textContent = `${plural(body.children.length, "event")} shown${answer.index && !answer.index.complete ? ` (${answer.index.message})` : ""}.`;
}

async function verifyLiveReceipt(seq, cell) {
  const key = pinnedKey();
  if (!key) {
    cell.textContent = "Pin the appliance's key first.";
    cell.className = "verdict-bad";
    return;
  }
  cell.textContent = "Verifying…";
  let receipt;
  try {
    receipt = await fetch(`/v1/events/${seq}/receipt`, { credentials: "same-origin" }).then(async (r) => {
      if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
      return r.text();
    });
  } catch (e) {
    cell.textContent = `Could not fetch: ${e.message}`;
    cell.className = "verdict-bad";
    return;
  }
  await engine.ready;
  const r = await ask({ type: "receipt", receipt, keys: key, options: liveOptions(key) });
  if (r.ok) {
    cell.textContent = `Verified: in head ${r.report.height} (tree size ${r.report.tree_size}), key ${r.report.key_id}`;
    cell.className = "verdict-ok";
  } else {
    const f = r.failure;
    cell.textContent = r.input_error
      ? `NOT VERIFIED: ${r.input_error}`
      : `NOT VERIFIED at ${f.kind} ${f.at}: ${f.message}`;
    cell.className = "verdict-bad";
  }
  cell.dataset.verdict = r.ok ? "ok" : "bad";
}

function selectTab(which) {
  for (const [tab, panel] of [["tab-offline", "offline"], ["tab-live", "live"]]) {
    const on = panel === which;
    $(tab).setAttribute("aria-selected", String(on));
    // One tab in the Tab order; the arrow keys move between tabs (WAI-ARIA tabs pattern).
    $(tab).tabIndex = on ? 0 : -1;
    $(panel).hidden = !on;
  }
}

function tabKeys(event) {
  if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
  if ($("tab-live").hidden) return;
  const next = $("tab-offline").getAttribute("aria-selected") === "true" ? "live" : "offline";
  selectTab(next);
  $(`tab-${next}`).focus();
}

async function setUpLive() {
  // Live mode needs the appliance: the page was served by it over mTLS (https), never opened from disk.
  if (location.protocol !== "https:") return;
  $("tab-live").hidden = false;
  $("tab-live").addEventListener("click", () => selectTab("live"));
  $("tab-offline").addEventListener("click", () => selectTab("offline"));
  showPinned();
  $("pin-button").addEventListener("click", () => {
    const text = $("pin-text").value.trim();
    if (!text.includes("-----BEGIN")) {
      $("pinned").textContent = "That is not a PEM public key or certificate.";
      return;
    }
    localStorage.setItem(PIN_STORAGE, text);
    $("pin-text").value = "";
    showPinned();
    refreshHead();
  });
  $("unpin-button").addEventListener("click", () => {
    localStorage.removeItem(PIN_STORAGE);
    showPinned();
  });
  $("head-refresh").addEventListener("click", refreshHead);
  $("search-form").addEventListener("submit", (e) => search(e, null));
  $("next-page").addEventListener("click", () => search(null, live.cursor));
  if (location.hash === "#live") selectTab("live");
  refreshHead();
}

// ---------------------------------------------------------------------------------------------------------

async function main() {
  setUpDrop();
  $("offline-form").addEventListener("submit", verifyOffline);
  $("tab-offline").addEventListener("click", () => selectTab("offline"));
  document.querySelector("nav").addEventListener("keydown", tabKeys);
  const status = $("engine-status");
  try {
    const ready = await startEngine();
    if (!ready.version) throw new Error(ready.input_error || "no answer from the verifier");
    status.textContent = ready.checkers
      ? `Verifier ready (WebAssembly, in Web Workers: bundles are checked by ${ready.checkers}).`
      : "Verifier ready (WebAssembly, in a Web Worker).";
    $("version").textContent = ready.version;
    document.body.dataset.engine = "ready";
  } catch (e) {
    status.textContent = `The verifier could not start: ${e.message}`;
    document.body.dataset.engine = "failed";
  }
  setUpLive();
}

main();
