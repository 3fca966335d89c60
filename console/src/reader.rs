//! The auditor's file, read through a JavaScript function: `std::io::Read + Seek` over
//! `read(offset, length) -> Uint8Array` (in the page's worker, `FileReaderSync` over a `File` slice).
//!
//! Each call into JavaScript costs a copy and, in the browser, a trip to the browser process, so the file is
//! read through one window of [`WINDOW`] bytes: reads and seeks inside the window cost nothing. (A
//! `BufReader` would drop its buffer at every seek, and the verifier's first pass seeks past every member it
//! does not need: that re-read the same megabytes once per member.)

use std::cell::Cell;
use std::io::{Error, ErrorKind, Read, Seek, SeekFrom};
use wasm_bindgen::{JsCast, JsValue};

/// Bytes asked of JavaScript at a time.
pub const WINDOW: usize = 4 << 20;

/// A file of `size` bytes behind a JavaScript read function.
pub struct JsFile<'a> {
    read: &'a js_sys::Function,
    size: u64,
    /// The read position, shared with the progress callback (which reports how far the verifier has read).
    position: &'a Cell<u64>,
    /// The bytes at `window_start..window_start + window.len()`.
    window: Vec<u8>,
    window_start: u64,
}

impl<'a> JsFile<'a> {
    /// The file from its start; `read(offset, length)` must return a `Uint8Array` of at most `length` bytes
    /// from `offset`.
    pub fn new(read: &'a js_sys::Function, size: f64, position: &'a Cell<u64>) -> JsFile<'a> {
        // A File's size is an integer below 2^53; anything else is read as empty.
        let size = if size.is_finite() && size >= 0.0 { size as u64 } else { 0 };
        position.set(0);
        JsFile { read, size, position, window: Vec::new(), window_start: 0 }
    }

    /// Loads the window at `at`.
    fn fill(&mut self, at: u64) -> std::io::Result<()> {
        let want = (WINDOW as u64).min(self.size.saturating_sub(at));
        let got = self
            .read
            .call2(&JsValue::NULL, &JsValue::from(at as f64), &JsValue::from(want as f64))
            .map_err(|e| Error::other(format!("reading the file failed: {e:?}")))?;
        let bytes = got
            .dyn_into::<js_sys::Uint8Array>()
            .map_err(|_| Error::other("the page's read function did not return a Uint8Array"))?;
        let n = (bytes.length() as u64).min(want) as u32;
        self.window.resize(n as usize, 0);
        bytes.subarray(0, n).copy_to(&mut self.window);
        self.window_start = at;
        Ok(())
    }
}

impl Read for JsFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.position.get();
        if at >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let in_window = at >= self.window_start && at < self.window_start + self.window.len() as u64;
        if !in_window {
            self.fill(at)?;
        }
        let from = (at - self.window_start) as usize;
        let n = buf.len().min(self.window.len() - from);
        buf[..n].copy_from_slice(&self.window[from..from + n]);
        self.position.set(at + n as u64);
        Ok(n)
    }
}

impl Seek for JsFile<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let at = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.get().checked_add_signed(d),
        };
        let at =
            at.ok_or_else(|| Error::new(ErrorKind::InvalidInput, "seek before the start of the file"))?;
        self.position.set(at);
        Ok(at)
    }
}
