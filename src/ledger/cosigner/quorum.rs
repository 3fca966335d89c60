//! Which heads are still below the witness quorum: what `/readyz` and `/metrics` report.
//!
//! Only heads from the first height the cosigner works on count (heads sealed before witnessing was turned on
//! are out of scope). A head leaves the set once distinct configured witnesses reaching the quorum cosigned it;
//! cosignatures are recorded as sets per head, so learning one twice (from the database and from a witness
//! task) is harmless.

use crate::store::cosignatures::HeadCosigners;
use std::collections::BTreeMap;

/// Most configured witnesses (one bit each).
pub const MAX_TRACKED_WITNESSES: usize = 64;

/// Heads below the quorum, with their seal times and which witnesses cosigned them so far.
#[derive(Debug)]
pub struct QuorumTracker {
    /// The configured witnesses' `(key name, key ID)`, in configuration order.
    keys: Vec<(String, u32)>,
    quorum: u32,
    /// height → (seal time ms, bit set of the witnesses that cosigned it).
    below: BTreeMap<u64, (i64, u64)>,
    /// The next height to learn from the database.
    next_load: u64,
}

impl QuorumTracker {
    /// A tracker of the heads from `start` on.
    pub fn new(keys: Vec<(String, u32)>, quorum: usize, start: u64) -> QuorumTracker {
        QuorumTracker { keys, quorum: quorum as u32, below: BTreeMap::new(), next_load: start }
    }

    /// The next height [`QuorumTracker::load`] expects.
    pub fn next_load(&self) -> u64 {
        self.next_load
    }

    /// Learns heads `next_load..` from the database, in height order.
    pub fn load(&mut self, rows: Vec<HeadCosigners>) {
        for HeadCosigners { height, sealed_at_ms: sealed_ms, cosigners } in rows {
            if height < self.next_load {
                continue;
            }
            let mut mask = 0u64;
            for (name, id) in &cosigners {
                if let Some(i) = self.keys.iter().position(|(n, k)| n == name && k == id) {
                    mask |= 1 << i;
                }
            }
            if mask.count_ones() < self.quorum {
                self.below.insert(height, (sealed_ms, mask));
            }
            self.next_load = height + 1;
        }
    }

    /// Witness `index` cosigned `height`; `false` when that head is not loaded yet (load first, then the
    /// database row already counts it).
    pub fn cosigned(&mut self, height: u64, index: usize) -> bool {
        if height >= self.next_load {
            return false;
        }
        if let Some((_, mask)) = self.below.get_mut(&height) {
            *mask |= 1 << index;
            if mask.count_ones() >= self.quorum {
                self.below.remove(&height);
            }
        }
        true
    }

    /// How many heads are below the quorum, and the seal time of the oldest.
    pub fn below(&self) -> (u64, Option<i64>) {
        (self.below.len() as u64, self.below.values().next().map(|(t, _)| *t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_leave_the_set_at_the_quorum_and_duplicates_do_not_count_twice() {
        let keys = vec![("w1".to_string(), 1), ("w2".to_string(), 2), ("w3".to_string(), 3)];
        let mut t = QuorumTracker::new(keys, 2, 5);
        let k = |n: &str, id| (n.to_string(), id);
        let h = |height, sealed_at_ms, cosigners| HeadCosigners { height, sealed_at_ms, cosigners };
        t.load(vec![
            h(4, 40, vec![]),
            h(5, 50, vec![k("w1", 1), k("w2", 2)]),
            h(6, 60, vec![k("w1", 1), k("w1", 1), k("other", 9), k("w2", 7)]),
            h(7, 70, vec![]),
        ]);
        assert_eq!(t.next_load(), 8);
        assert_eq!(t.below(), (2, Some(60)), "4 is before the start, 5 has its quorum");
        assert!(!t.cosigned(8, 0), "not loaded yet");
        assert!(t.cosigned(6, 0));
        assert_eq!(t.below(), (2, Some(60)), "w1 again does not count twice");
        assert!(t.cosigned(6, 2));
        assert_eq!(t.below(), (1, Some(70)));
        t.cosigned(7, 1);
        t.cosigned(7, 1);
        assert_eq!(t.below(), (1, Some(70)));
        t.cosigned(7, 0);
        assert_eq!(t.below(), (0, None));
    }
}
