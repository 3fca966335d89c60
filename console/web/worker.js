// The verifier's threads. The page builds this worker from engine.js (wasm-bindgen's glue, this file and the
// WebAssembly module, all inlined), so it works opened from disk too: no fetch, no module loading.
//
// One copy is the page's verifier (the coordinator): it answers the page's requests. For a bundle it starts
// checking workers (more copies of this same script, from the same inlined source) and splits the work: they
// run each event's own checks (the hashes: most of the time) on chunks of entries.jsonl, it folds their answers
// strictly in seq order into the walk (the tree, the heads, the key chain), so the first failure in seq order
// is the one reported, whichever chunk failed first in time. No SharedArrayBuffer (a page opened from disk
// cannot have it): chunks and answers are ArrayBuffers transferred with postMessage.
//
// Every message from the page carries an `id`; the answer (`result`) and any `progress` messages carry it back.
/* global wasm_bindgen, FileReaderSync */
"use strict";

/** Bytes of entries.jsonl per block a checking worker reads and checks: ~8,000 events. In Chromium each read of
 * a File costs a trip to the browser process: 1 MiB reads took twice the time of 4 MiB ones in all
 * (docs/PERFORMANCE.md), and larger blocks balance worse over the workers. */
const CHUNK = 4 << 20;
/** Blocks handed out but not yet folded, per checking worker: one being checked, one waiting, so a worker
 * never idles while memory stays a few blocks. */
const AHEAD_PER_CHECKER = 2;

/** The checking workers (empty in a checking worker, or where a worker cannot start workers). */
const pool = [];
/** The bundle being walked: its answers go to `pending.onAnswer`. */
let pending = null;
let jobs = 0;

function answer(id, result) {
  self.postMessage({ type: "result", id, result });
}

function message(e) {
  return e && e.message ? e.message : String(e);
}

/**
 * Starts `count` checking workers from this script's source, each with its own instance of `module` (compiled
 * once: the workers share its code, and its optimisation of hot functions; a worker compiling its own copy
 * would start on baseline code, per worker, each time the page is opened), or of `bytes` where a compiled
 * module cannot be posted.
 */
function startPool(source, module, bytes, count) {
  if (typeof Worker === "undefined" || !source) return;
  const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  for (let i = 0; i < count; i++) {
    const w = new Worker(url);
    w.onmessage = (event) => {
      if (pending && event.data.job === pending.job) pending.onAnswer(event.data);
    };
    w.onerror = (event) => {
      if (pending) pending.onAnswer({ job: pending.job, error: event.message || "a checking worker failed" });
    };
    try {
      w.postMessage({ type: "init-checker", wasm: module });
    } catch (e) {
      w.postMessage({ type: "init-checker", wasm: bytes });
    }
    pool.push(w);
  }
}

/**
 * Walks entries.jsonl (the file's bytes `session.entries_offset()` on): hands its blocks of CHUNK bytes
 * round-robin to the checking workers, which read them themselves (in parallel: reading is a good part of the
 * work) and check the lines that start in them, and folds their answers into `session` in block order. Resolves
 * once everything is folded or the walk failed (the session then holds the verdict); rejects when a worker or
 * the file failed.
 */
function walkEntries(session, file, id) {
  return new Promise((resolve, reject) => {
    const job = ++jobs;
    const begin = session.entries_offset();
    const end = begin + session.entries_size();
    const blocks = Math.ceil((end - begin) / CHUNK);
    const firstSeq = session.next_seq();
    const ahead = pool.length * AHEAD_PER_CHECKER;
    const answers = new Map(); // block index → the checker's answer, until its turn to be folded
    const timing = { fold_ms: 0, check_ms: 0, read_ms: 0 };
    session.timing = timing;
    let sent = 0;
    let folded = 0;
    let over = false;

    // Between answers the coordinator would idle: it checks the head tokens meanwhile (signatures and chains,
    // which need nothing from the walk), one per task so that answers are folded as they come.
    const idle = new MessageChannel();
    idle.port1.onmessage = () => {
      try {
        if (!over && session.precheck_token()) idle.port2.postMessage(0);
      } catch (e) {
        stop(e);
      }
    };

    const stop = (error) => {
      if (over) return;
      over = true;
      idle.port1.close();
      pending = null;
      if (error) reject(error);
      else resolve();
    };

    const send = () => {
      while (!over && sent < blocks && sent - folded < ahead) {
        const index = sent++;
        const from = begin + index * CHUNK;
        const to = Math.min(end, from + CHUNK);
        pool[index % pool.length].postMessage({ type: "check", job, index, file, begin, end, from, to });
      }
    };

    const fold = () => {
      while (!over && answers.has(folded)) {
        const out = answers.get(folded);
        answers.delete(folded);
        const t = performance.now();
        const goOn = session.fold(out);
        timing.fold_ms += performance.now() - t;
        folded++;
        if (!goOn) return stop();
        self.postMessage({
          type: "progress",
          id,
          events: session.next_seq() - firstSeq,
          bytes: Math.min(end, begin + folded * CHUNK),
          size: file.size,
        });
      }
      if (!over && folded === blocks) stop();
    };

    pending = {
      job,
      onAnswer: (m) => {
        if (over) return;
        if (m.error) return stop(new Error(m.error));
        timing.check_ms += m.check_ms;
        timing.read_ms += m.read_ms;
        answers.set(m.index, new Uint8Array(m.out));
        // A message handler's exception would leave the page waiting forever: it ends the walk instead.
        try {
          fold();
          send();
        } catch (e) {
          stop(e);
        }
      },
    };
    send();
    idle.port2.postMessage(0);
    fold(); // an empty entries.jsonl has no block
  });
}

/**
 * A checking worker's read: the lines of entries.jsonl (the file's bytes `begin..end`) that start in its block
 * `from..to`, whole. A line belongs to the block it starts in: the line cut by `from` is the previous block's,
 * and the last line starting before `to` is read to its end, past `to`. Every `\n`-terminated piece is a line
 * (an empty one too: it fails at its seq), and so is a last piece without one, as for the native reader.
 */
function linesOfBlock(file, begin, end, from, to) {
  const reader = new FileReaderSync();
  // One byte before the block: whether the block starts a line.
  const base = from > begin ? from - 1 : from;
  let stop = Math.min(end, to + 4096);
  let bytes = new Uint8Array(reader.readAsArrayBuffer(file.slice(base, stop)));
  if (bytes.length !== stop - base) throw new Error("the file changed while it was read");
  let first = 0;
  if (from > begin) {
    const nl = bytes.indexOf(10);
    if (nl < 0 || base + nl + 1 >= to) return bytes.subarray(0, 0);
    first = nl + 1;
  }
  // The end of the last line that starts before `to`: the first newline at `to − 1` or after.
  for (;;) {
    const nl = bytes.indexOf(10, Math.max(first, to - 1 - base));
    if (nl >= 0) return bytes.subarray(first, nl + 1);
    if (stop === end) return bytes.subarray(first);
    // A line longer than what was read: read on, twice as far each time.
    const more = Math.min(end, stop + Math.max(4096, stop - base));
    const next = new Uint8Array(more - base);
    next.set(bytes);
    const tail = new Uint8Array(reader.readAsArrayBuffer(file.slice(stop, more)));
    if (tail.length !== more - stop) throw new Error("the file changed while it was read");
    next.set(tail, bytes.length);
    bytes = next;
    stop = more;
  }
}

/** The bundle on this worker alone: the whole core verifier, reading the file synchronously. */
function verifyBundleHere(file, read, m) {
  const progress = (events, bytes) =>
    self.postMessage({ type: "progress", id: m.id, events, bytes, size: file.size });
  return JSON.parse(wasm_bindgen.verify_bundle(read, file.size, m.keys, JSON.stringify(m.options), progress));
}

async function verifyBundle(m) {
  // The first pass reads small members, synchronously (workers have FileReaderSync), in slices as the
  // verifier asks for them; never the whole file at once.
  const file = m.file;
  const reader = new FileReaderSync();
  const read = (offset, length) => new Uint8Array(reader.readAsArrayBuffer(file.slice(offset, offset + length)));
  const started = performance.now();
  let out;
  if (pool.length === 0) {
    out = verifyBundleHere(file, read, m);
  } else {
    const session = wasm_bindgen.BundleSession.start(read, file.size, m.keys, JSON.stringify(m.options));
    try {
      if (session.walking() && session.entries_offset() < 0) {
        // entries.jsonl is not a plain tar member: only the tar reader reads it.
        out = verifyBundleHere(file, read, m);
      } else {
        const walkStart = performance.now();
        if (session.walking()) await walkEntries(session, file, m.id);
        const walked = performance.now();
        out = JSON.parse(session.finish());
        out.timing = { ...session.timing, first_pass_ms: walkStart - started, walk_ms: walked - walkStart, finish_ms: performance.now() - walked };
      }
    } finally {
      session.free();
    }
  }
  out.elapsed_ms = performance.now() - started;
  answer(m.id, out);
}

self.onmessage = async (event) => {
  const m = event.data;
  try {
    switch (m.type) {
      case "init": {
        const module = new WebAssembly.Module(m.wasm);
        wasm_bindgen.initSync({ module });
        try {
          startPool(m.source, module, m.wasm, m.checkers);
        } catch (e) {
          // No workers from a worker here: the bundle is verified on this one (slower, same verdict).
          pool.length = 0;
        }
        self.postMessage({ type: "ready", id: m.id, version: wasm_bindgen.version(), checkers: pool.length });
        return;
      }
      case "init-checker":
        wasm_bindgen.initSync({ module: m.wasm });
        return;
      case "check": {
        // A checking worker: the own checks of the lines of its block, answered with the block's index and
        // the coordinator's job.
        try {
          const t0 = performance.now();
          const lines = linesOfBlock(m.file, m.begin, m.end, m.from, m.to);
          const t1 = performance.now();
          const out = wasm_bindgen.check_entries(lines);
          const t2 = performance.now();
          const answer = { job: m.job, index: m.index, out: out.buffer, read_ms: t1 - t0, check_ms: t2 - t1 };
          self.postMessage(answer, [out.buffer]);
        } catch (e) {
          self.postMessage({ job: m.job, index: m.index, error: `a checking worker stopped: ${message(e)}` });
        }
        return;
      }
      case "receipt":
        answer(m.id, JSON.parse(wasm_bindgen.verify_receipt(m.receipt, m.keys, JSON.stringify(m.options))));
        return;
      case "head":
        answer(m.id, JSON.parse(wasm_bindgen.verify_head(m.head, m.keys, JSON.stringify(m.options))));
        return;
      case "bundle":
        await verifyBundle(m);
        return;
      default:
        answer(m.id, { ok: false, input_error: `unknown request ${m.type}` });
    }
  } catch (e) {
    answer(m.id, { ok: false, input_error: `the verifier stopped: ${message(e)}` });
  }
};
