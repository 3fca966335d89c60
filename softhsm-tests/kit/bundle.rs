//! Export bundles (tar) taken apart and put back together, as an attacker editing one would, and checked by the
//! independent Python verifier. Needs no SoftHSM: the `tests/` targets include this file alone (`#[path]`).
// Included alone by targets that use only part of it (the kit's own allow does not reach them).
#![allow(dead_code)]

use std::path::Path;

/// Every member of the tar at `tar`, in order: (path, contents).
pub fn tar_members(tar: &Path) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(std::fs::File::open(tar).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// Writes `members` as a tar at `out` (mode 0644, GNU headers).
pub fn write_tar(out: &Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

/// The independent Python verifier (`tests/verify_bundle.py`, which knows nothing of the Rust code) on the
/// bundle `tar` with the public key `key` and `extra` arguments → (exit code, its stdout trimmed, its stderr).
pub fn python_verify(tar: &Path, key: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_bundle.py"))
        .arg(tar)
        .arg(key)
        .args(extra)
        .output()
        .expect("python3 runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
