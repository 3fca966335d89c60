//! The O(1)-ish start-up check that a database file is not shorter than its own header says (a truncated copy, a
//! partial restore), taking into account the pages a WAL checkpoint was copying when the process died.
//!
//! A WAL checkpoint copies pages from the `-wal` file into the database in page order, page 1 (with the new page
//! count in its header) first, and only then the higher pages. A kill -9 in between leaves a database file
//! shorter than its header says while every missing page is still in the WAL, from which SQLite finishes the
//! job on the next open. So a short file is damage only when the WAL does not hold the missing pages.

use std::io::Read as _;
use std::path::Path;

/// The WAL header's size (RFC-like layout in <https://www.sqlite.org/fileformat2.html#walformat>).
const WAL_HEADER: usize = 32;
/// Each frame's header size; the page follows it.
const FRAME_HEADER: usize = 24;

/// Checks the file at `path` against its header's page count. `Err` carries what is wrong (for
/// [`super::StoreError::Damaged`]). A missing or empty file is left to SQLite.
pub(super) fn check(path: &Path) -> Result<(), String> {
    let Ok(mut f) = std::fs::File::open(path) else { return Ok(()) };
    let len = f.metadata().map_err(|e| format!("cannot read its size: {e}"))?.len();
    let mut header = [0u8; 100];
    if len < header.len() as u64 {
        return if len == 0 {
            Ok(())
        } else {
            Err(format!("the file is {len} bytes, shorter than its header"))
        };
    }
    f.read_exact(&mut header).map_err(|e| format!("cannot read its header: {e}"))?;
    if &header[..16] != b"SQLite format 3\0" {
        return Err("the file does not start with the SQLite header".into());
    }
    // Page size: 1 means 65536. The in-header page count is valid only when the change counter equals the
    // version-valid-for number (SQLite's own rule); older writers left it stale.
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536u64,
        n => u64::from(n),
    };
    let (pages, valid) = (u64::from(be32(&header, 28)), be32(&header, 24) == be32(&header, 92));
    if !valid || pages == 0 || page_size == 0 || len >= pages * page_size {
        return Ok(());
    }
    // Pages first..=pages are not (wholly) in the file: they must be committed frames of the WAL.
    let first_missing = len / page_size + 1;
    let wal_pages = committed_wal_pages(&wal_path(path), page_size);
    let missing: Vec<u64> = (first_missing..=pages).filter(|p| wal_pages.binary_search(p).is_err()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the file is {len} bytes but its header says {pages} pages of {page_size} bytes ({} bytes): it was \
         truncated ({} of the {} missing pages are not in the WAL either, the first is page {})",
        pages * page_size,
        missing.len(),
        pages + 1 - first_missing,
        missing[0],
    ))
}

/// The `-wal` file beside the database.
fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push("-wal");
    name.into()
}

/// Big-endian u32 at `at`.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The page numbers (sorted, unique) of the WAL frames SQLite's recovery would keep: the longest prefix of frames
/// whose salts match the header's and whose cumulative checksums verify, cut after its last commit frame. An
/// absent, short or unreadable WAL holds no pages.
fn committed_wal_pages(wal: &Path, page_size: u64) -> Vec<u64> {
    let Ok(bytes) = std::fs::read(wal) else { return Vec::new() };
    let mut pages = committed_frames(&bytes, page_size);
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// See [`committed_wal_pages`]; over the WAL's bytes.
fn committed_frames(wal: &[u8], page_size: u64) -> Vec<u64> {
    if wal.len() < WAL_HEADER {
        return Vec::new();
    }
    let magic = be32(wal, 0);
    // The magic's low bit says in which byte order the checksums were computed.
    let big_endian = match magic {
        0x377f_0682 => false,
        0x377f_0683 => true,
        _ => return Vec::new(),
    };
    if u64::from(be32(wal, 8)) != page_size {
        return Vec::new();
    }
    let (salt1, salt2) = (be32(wal, 16), be32(wal, 20));
    let mut sum = checksum(big_endian, (0, 0), &wal[..24]);
    if sum != (be32(wal, 24), be32(wal, 28)) {
        return Vec::new();
    }
    let Ok(page_size) = usize::try_from(page_size) else { return Vec::new() };
    let (mut frames, mut committed) = (Vec::new(), 0);
    let mut at = WAL_HEADER;
    while at + FRAME_HEADER + page_size <= wal.len() {
        let frame = &wal[at..at + FRAME_HEADER + page_size];
        if be32(frame, 8) != salt1 || be32(frame, 12) != salt2 {
            break;
        }
        sum = checksum(big_endian, sum, &frame[..8]);
        sum = checksum(big_endian, sum, &frame[FRAME_HEADER..]);
        if sum != (be32(frame, 16), be32(frame, 20)) {
            break;
        }
        frames.push(u64::from(be32(frame, 0)));
        if be32(frame, 4) != 0 {
            committed = frames.len();
        }
        at += FRAME_HEADER + page_size;
    }
    frames.truncate(committed);
    frames
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `(s0, s1)`.
fn checksum(big_endian: bool, (mut s0, mut s1): (u32, u32), data: &[u8]) -> (u32, u32) {
    for word in data.chunks_exact(8) {
        let read = |b: &[u8]| {
            let b = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s0 = s0.wrapping_add(read(&word[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(read(&word[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// A database in WAL mode whose 300 rows (many pages) are only in the WAL, as a kill -9 leaves it: the
    /// database and WAL files copied while the writer is still open (no `-shm`, so opening it runs recovery).
    fn log_in_wal(dir: &Path) -> std::path::PathBuf {
        let live = dir.join("live.db");
        let conn = Connection::open(&live).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x BLOB);")
            .unwrap();
        for i in 0..300 {
            conn.execute("INSERT INTO t VALUES (?1)", [vec![i as u8; 1000]]).unwrap();
        }
        let db = dir.join("a.db");
        std::fs::copy(&live, &db).unwrap();
        std::fs::copy(wal_path(&live), wal_path(&db)).unwrap();
        drop(conn);
        db
    }

    /// The newest committed copy of page 1 in the WAL: what a checkpoint writes into the file first.
    fn newest_page_1(wal: &[u8], page_size: usize) -> Vec<u8> {
        let mut newest = None;
        let mut at = WAL_HEADER;
        while at + FRAME_HEADER + page_size <= wal.len() {
            if be32(wal, at) == 1 {
                newest = Some(wal[at + FRAME_HEADER..at + FRAME_HEADER + page_size].to_vec());
            }
            at += FRAME_HEADER + page_size;
        }
        newest.unwrap()
    }

    /// Plays the kill -9 in the middle of a checkpoint: page 1 (with the new page count) copied into the file,
    /// the higher pages not yet.
    fn checkpoint_cut_after_page_1(db: &Path) -> Vec<u8> {
        let wal = std::fs::read(wal_path(db)).unwrap();
        let page_size = be32(&wal, 8) as usize;
        let page1 = newest_page_1(&wal, page_size);
        std::fs::write(db, &page1).unwrap();
        wal
    }

    #[test]
    fn a_checkpoint_cut_after_page_1_is_not_damage_and_sqlite_recovers_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = log_in_wal(dir.path());
        checkpoint_cut_after_page_1(&db);
        let header = std::fs::read(&db).unwrap();
        assert!(be32(&header, 28) > 20, "the header claims the pages the WAL holds");
        assert_eq!(check(&db), Ok(()));
        let conn = Connection::open(&db).unwrap();
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 300);
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn the_same_file_without_its_wal_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let db = log_in_wal(dir.path());
        checkpoint_cut_after_page_1(&db);
        std::fs::remove_file(wal_path(&db)).unwrap();
        let err = check(&db).unwrap_err();
        assert!(err.starts_with("the file is 4096 bytes but its header says "), "{err}");
        assert!(err.contains("it was truncated"), "{err}");
        assert!(err.ends_with("the first is page 2)"), "{err}");
    }

    #[test]
    fn a_wal_whose_frames_fail_their_checksum_does_not_cover_the_missing_pages() {
        let dir = tempfile::tempdir().unwrap();
        let db = log_in_wal(dir.path());
        let mut wal = checkpoint_cut_after_page_1(&db);
        // One flipped byte in the first frame's page: recovery stops there, so no frame counts.
        wal[WAL_HEADER + FRAME_HEADER + 10] ^= 0xFF;
        std::fs::write(wal_path(&db), &wal).unwrap();
        let err = check(&db).unwrap_err();
        assert!(err.contains("it was truncated"), "{err}");
    }

    #[test]
    fn uncommitted_trailing_frames_do_not_count() {
        let wal_bytes = {
            let dir = tempfile::tempdir().unwrap();
            let db = log_in_wal(dir.path());
            std::fs::read(wal_path(&db)).unwrap()
        };
        let page_size = be32(&wal_bytes, 8) as u64;
        let all = committed_frames(&wal_bytes, page_size);
        assert!(!all.is_empty());
        // Cut the WAL inside its last frame: the last commit is gone, the frames of that transaction too.
        let cut = &wal_bytes[..wal_bytes.len() - 1];
        let fewer = committed_frames(cut, page_size);
        assert!(fewer.len() < all.len(), "{} vs {}", fewer.len(), all.len());
        assert_eq!(fewer[..], all[..fewer.len()]);
    }

    #[test]
    fn a_file_without_the_sqlite_header_or_shorter_than_it_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(&db, b"short").unwrap();
        assert_eq!(check(&db), Err("the file is 5 bytes, shorter than its header".into()));
        std::fs::write(&db, [7u8; 200]).unwrap();
        assert_eq!(check(&db), Err("the file does not start with the SQLite header".into()));
        std::fs::write(&db, b"").unwrap();
        assert_eq!(check(&db), Ok(()));
        assert_eq!(check(&dir.path().join("absent.db")), Ok(()));
    }
}
