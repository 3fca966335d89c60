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

/** Bytes of entries.jsonl per chunk: ~2,000 events, a few milliseconds of checking; a few chunks per worker
 * in flight keep every worker busy while memory stays a few megabytes. */
const CHUNK = 1 << 20;
/** Chunks read but not yet folded, per checking worker. */
const AHEAD_PER_CHECKER = 3;

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

/** Starts `count` checking workers from this script's source, each with its own instance of the module. */
function startPool(source, wasm, count) {
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
    w.postMessage({ type: "init-checker", wasm });
    pool.push(w);
  }
}

/** Reads the file's bytes `from..to` (async: the coordinator must stay free to take answers meanwhile). */
async function readSlice(file, from, to) {
  const buf = await file.slice(from, to).arrayBuffer();
  if (buf.byteLength !== to - from) throw new Error("the file changed while it was read");
  return buf;
}

/**
 * Walks entries.jsonl: reads it in chunks cut at line ends, hands them round-robin to the checking workers and
 * folds their answers into `session` in chunk order. Resolves once everything is folded or the walk failed
 * (the session then holds the verdict); rejects when a worker or the file failed.
 */
function walkEntries(session, file, id) {
  return new Promise((resolve, reject) => {
    const job = ++jobs;
    const begin = session.entries_offset();
    const end = begin + session.entries_size();
    const firstSeq = session.next_seq();
    const ahead = pool.length * AHEAD_PER_CHECKER;
    const answers = new Map(); // chunk index → the checker's answer, until its turn to be folded
    const chunkEnds = []; // chunk index → file offset after it (the progress bar)
    let pos = begin; // next byte to read
    let sent = 0;
    let folded = 0;
    let reading = false;
    let over = false;

    const stop = (error) => {
      if (over) return;
      over = true;
      pending = null;
      if (error) reject(error);
      else resolve();
    };

    const fold = () => {
      while (!over && answers.has(folded)) {
        const out = answers.get(folded);
        answers.delete(folded);
        const goOn = session.fold(out);
        folded++;
        if (!goOn) return stop();
        self.postMessage({
          type: "progress",
          id,
          events: session.next_seq() - firstSeq,
          bytes: chunkEnds[folded - 1],
          size: file.size,
        });
      }
      if (!over && pos >= end && folded === sent) stop();
    };

    const pump = async () => {
      if (reading || over) return;
      reading = true;
      try {
        while (!over && pos < end && sent - folded < ahead) {
          // Whole lines: up to the last newline, or the rest of the member; a line longer than the chunk
          // doubles the read until it ends.
          let size = CHUNK;
          let buf;
          let len;
          for (;;) {
            const to = Math.min(end, pos + size);
            buf = await readSlice(file, pos, to);
            if (to === end) {
              len = buf.byteLength;
              break;
            }
            const nl = new Uint8Array(buf).lastIndexOf(10);
            if (nl >= 0) {
              len = nl + 1;
              break;
            }
            size *= 2;
          }
          if (over) return;
          const index = sent++;
          pos += len;
          chunkEnds[index] = pos;
          pool[index % pool.length].postMessage({ type: "check", job, index, buf, len }, [buf]);
        }
      } catch (e) {
        stop(e);
      } finally {
        reading = false;
      }
      fold();
    };

    pending = {
      job,
      onAnswer: (m) => {
        if (over) return;
        if (m.error) return stop(new Error(m.error));
        answers.set(m.index, new Uint8Array(m.out));
        fold();
        pump();
      },
    };
    pump();
  });
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
        if (session.walking()) await walkEntries(session, file, m.id);
        out = JSON.parse(session.finish());
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
        wasm_bindgen.initSync({ module: m.wasm });
        try {
          startPool(m.source, m.wasm, m.checkers);
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
        // A checking worker: the chunk's own checks, answered with the chunk's index and the coordinator's job.
        let out;
        try {
          out = wasm_bindgen.check_entries(new Uint8Array(m.buf, 0, m.len));
        } catch (e) {
          self.postMessage({ job: m.job, index: m.index, error: `a checking worker stopped: ${message(e)}` });
          return;
        }
        self.postMessage({ job: m.job, index: m.index, out: out.buffer }, [out.buffer]);
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
