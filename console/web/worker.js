// The verifier's thread. The page builds this worker from engine.js (wasm-bindgen's glue, this file and the
// WebAssembly module, all inlined), so it works opened from disk too: no fetch, no module loading.
// Every message carries an `id`; the answer (`result`) and any `progress` messages carry it back.
/* global wasm_bindgen, FileReaderSync */
"use strict";

function answer(id, result) {
  self.postMessage({ type: "result", id, result });
}

self.onmessage = (event) => {
  const m = event.data;
  try {
    switch (m.type) {
      case "init": {
        wasm_bindgen.initSync({ module: m.wasm });
        self.postMessage({ type: "ready", id: m.id, version: wasm_bindgen.version() });
        return;
      }
      case "receipt":
        answer(m.id, JSON.parse(wasm_bindgen.verify_receipt(m.receipt, m.keys, JSON.stringify(m.options))));
        return;
      case "head":
        answer(m.id, JSON.parse(wasm_bindgen.verify_head(m.head, m.keys, JSON.stringify(m.options))));
        return;
      case "bundle": {
        // A bundle can be gigabytes: read it in slices, synchronously (workers have FileReaderSync), as the
        // verifier asks for them; never the whole file at once.
        const file = m.file;
        const reader = new FileReaderSync();
        const read = (offset, length) =>
          new Uint8Array(reader.readAsArrayBuffer(file.slice(offset, offset + length)));
        const progress = (events, bytes) =>
          self.postMessage({ type: "progress", id: m.id, events, bytes, size: file.size });
        const started = performance.now();
        const out = JSON.parse(
          wasm_bindgen.verify_bundle(read, file.size, m.keys, JSON.stringify(m.options), progress),
        );
        out.elapsed_ms = performance.now() - started;
        answer(m.id, out);
        return;
      }
      default:
        answer(m.id, { ok: false, input_error: `unknown request ${m.type}` });
    }
  } catch (e) {
    answer(m.id, { ok: false, input_error: `the verifier stopped: ${e && e.message ? e.message : e}` });
  }
};
