//! The TPM monotonic counter in heads (docs/FORMAT.md §3, docs/TPM.md "Monotonic counter"): the rules that
//! tie a database to the TPM's counter, shared by the start-up check (`serve`), the offline check of a
//! certified counter reading (`verify --counter-attestation`) and the chain check of the verifier.
//!
//! Pure: no I/O, no TPM code, so it is part of the auditor's verify-only build.
//!
//! # The slack
//! The sealer reserves a counter value *before* it signs a head, and reuses a value no stored head carries
//! instead of incrementing again, so the TPM's counter is at most **one** above the newest stored head's
//! (a crash between reserving and storing). The counter is an *orderly* NV counter (`TPMA_NV_ORDERLY`): the
//! TPM keeps it in RAM and writes NV only every `MAX_ORDERLY_COUNT + 1` increments (and at `TPM2_Shutdown`),
//! so after a TPM reset without an orderly shutdown (power loss, `kill -9` of swtpm) it comes back with its
//! low bits all set: `value_written_to_NV | MAX_ORDERLY_COUNT` (TCG reference implementation,
//! `NvEntityStartup`; measured on swtpm in docs/TPM.md). That jump can only be present when the TPM's reset
//! count changed since the head was sealed *and* the counter's low bits are all ones, and then the newest
//! head's `value + 1` lies in the same `MAX_ORDERLY_COUNT + 1`-aligned window as the counter. So a database
//! whose last head carries `(c, r)` is the newest one for a TPM counter at `(C, R)` only if
//! `c <= C <= allowed`, where `allowed = (c + 1) | M` if `R != r` and `C & M == M`, else `c + 1`.

use crate::head::HeadCounter;

/// `MAX_ORDERLY_COUNT` of the TCG reference implementation (and of swtpm/libtpms): an orderly counter
/// writes NV every 256 increments. The offline check never assumes a larger value than this.
pub const REFERENCE_MAX_ORDERLY_COUNT: u64 = 255;

/// What the TPM says about the counter: read live at start-up, or certified by `TPM2_NV_Certify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CounterObservation {
    /// The NV index handle.
    pub index: u32,
    /// The counter's value; `None` while the index was never incremented (`TPMA_NV_WRITTEN` clear).
    pub value: Option<u64>,
    /// `TPMS_CLOCK_INFO.resetCount` when the value was read.
    pub reset_count: u32,
    /// `TPM_PT_ORDERLY_COUNT` (`MAX_ORDERLY_COUNT`, `2^N - 1`).
    pub max_orderly_count: u64,
}

/// Why a database is not the newest one for a TPM counter, or why its chain of counters is broken. Each
/// names the head height it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterFailure {
    /// The TPM's counter is beyond the slack above the last head's: heads after it were signed and are gone.
    #[error(
        "head height {height}: the last head carries TPM counter {head_value} (reset count {head_reset_count}) \
         but the TPM's counter {index:#010x} is at {tpm_value} (reset count {tpm_reset_count}; at most \
         {allowed} is consistent with this being the newest head): the database was rolled back or truncated \
         — heads signed after height {height} are missing. Restore the newest copy of the database; do not \
         write to this one"
    )]
    RolledBack {
        /// The last head in the database.
        height: u64,
        /// Its counter value.
        head_value: u64,
        /// Its reset count.
        head_reset_count: u32,
        /// The counter index.
        index: u32,
        /// The TPM's counter value.
        tpm_value: u64,
        /// The TPM's reset count.
        tpm_reset_count: u32,
        /// The largest TPM value consistent with the last head being the newest.
        allowed: u64,
    },
    /// The counter was used by heads this database does not have at all: a copy from before the first head
    /// that carried a counter.
    #[error(
        "head height {height}: no head of this log carries a TPM counter, but the counter {index:#010x} is at \
         {tpm_value} (heads were sealed with it): the database was rolled back or truncated to before the \
         counter's first use, or the counter belongs to another log. Restore the newest copy of the database, \
         or provision a fresh counter index for a new log"
    )]
    UsedByMissingHeads {
        /// The height of the next head this database would seal (its number of heads).
        height: u64,
        /// The counter index.
        index: u32,
        /// The TPM's counter value.
        tpm_value: u64,
    },
    /// The TPM's counter is below the last head's: the index was re-created, or it is another TPM.
    #[error(
        "head height {height}: the last head carries TPM counter {head_value} but the TPM's counter \
         {index:#010x} is {tpm}: this database does not belong to this counter (the index was deleted and \
         re-created, or this is another TPM)"
    )]
    TpmBehind {
        /// The last head.
        height: u64,
        /// Its counter value.
        head_value: u64,
        /// The counter index.
        index: u32,
        /// What the TPM has (`never incremented` or the value).
        tpm: String,
    },
    /// The head names another counter index than the TPM's.
    #[error(
        "head height {height}: the head carries the counter of NV index {head_index:#010x} but the TPM \
         counter is {tpm_index:#010x}; configure signer.tpm.counter_index = \"{head_index:#010x}\" (a log \
         keeps its counter)"
    )]
    OtherIndex {
        /// The head.
        height: u64,
        /// The index the head names.
        head_index: u32,
        /// The index of the observation.
        tpm_index: u32,
    },
    /// The log's heads carry a counter but the signer has none.
    #[error(
        "head height {height}: the log's heads carry TPM counter {index:#010x} but the signer has no \
         counter; configure signer.tpm.counter_index = \"{index:#010x}\""
    )]
    NoCounterConfigured {
        /// The last head.
        height: u64,
        /// The index the heads name.
        index: u32,
    },
    /// A head's counter is not above its predecessor's.
    #[error("head height {height}: TPM counter {value} is not greater than the previous head's {previous}")]
    NotIncreasing {
        /// The head.
        height: u64,
        /// Its counter value.
        value: u64,
        /// The previous head's.
        previous: u64,
    },
    /// A head has no counter although an earlier head had one.
    #[error(
        "head height {height}: carries no TPM counter although the previous head does (counter {previous})"
    )]
    Dropped {
        /// The head.
        height: u64,
        /// The previous head's counter value.
        previous: u64,
    },
    /// A head's counter comes from another NV index than its predecessor's.
    #[error("head height {height}: TPM counter index {index:#010x} differs from the previous head's {previous:#010x}")]
    IndexChanged {
        /// The head.
        height: u64,
        /// Its index.
        index: u32,
        /// The previous head's.
        previous: u32,
    },
}

impl CounterFailure {
    /// The height the failure names.
    pub fn height(&self) -> u64 {
        match self {
            CounterFailure::RolledBack { height, .. }
            | CounterFailure::UsedByMissingHeads { height, .. }
            | CounterFailure::TpmBehind { height, .. }
            | CounterFailure::OtherIndex { height, .. }
            | CounterFailure::NoCounterConfigured { height, .. }
            | CounterFailure::NotIncreasing { height, .. }
            | CounterFailure::Dropped { height, .. }
            | CounterFailure::IndexChanged { height, .. } => *height,
        }
    }
}

/// The largest TPM counter value consistent with `head` being the newest head, given the TPM's state (see
/// the module docs). `max_orderly_count` is `MAX_ORDERLY_COUNT` (`2^N - 1`).
pub fn allowed_tpm_value(
    head: &HeadCounter,
    tpm_value: u64,
    tpm_reset_count: u32,
    max_orderly_count: u64,
) -> u64 {
    let one_increment = head.value.saturating_add(1);
    let m = max_orderly_count;
    if tpm_reset_count != head.reset_count && m > 0 && tpm_value & m == m {
        one_increment | m
    } else {
        one_increment
    }
}

/// Checks that a database whose newest counter-carrying head is `last` (its height and counter; `None` if
/// no head carries one) and which holds `heads` heads is the newest one for the TPM counter `tpm`.
pub fn check_newest(
    last: Option<(u64, &HeadCounter)>,
    heads: u64,
    tpm: &CounterObservation,
) -> Result<(), CounterFailure> {
    let Some((height, head)) = last else {
        // A log without counter heads (new, or from before the counter) starts counting with its next head,
        // unless the counter was already used: then heads sealed with it are missing here.
        return match tpm.value {
            None => Ok(()),
            Some(tpm_value) => {
                Err(CounterFailure::UsedByMissingHeads { height: heads, index: tpm.index, tpm_value })
            }
        };
    };
    if head.index != tpm.index {
        return Err(CounterFailure::OtherIndex { height, head_index: head.index, tpm_index: tpm.index });
    }
    let Some(tpm_value) = tpm.value else {
        return Err(CounterFailure::TpmBehind {
            height,
            head_value: head.value,
            index: tpm.index,
            tpm: "unused (never incremented)".into(),
        });
    };
    if tpm_value < head.value {
        return Err(CounterFailure::TpmBehind {
            height,
            head_value: head.value,
            index: tpm.index,
            tpm: tpm_value.to_string(),
        });
    }
    let allowed = allowed_tpm_value(head, tpm_value, tpm.reset_count, tpm.max_orderly_count);
    if tpm_value > allowed {
        return Err(CounterFailure::RolledBack {
            height,
            head_value: head.value,
            head_reset_count: head.reset_count,
            index: tpm.index,
            tpm_value,
            tpm_reset_count: tpm.reset_count,
            allowed,
        });
    }
    Ok(())
}

/// The chain rule: a head's counter is strictly greater than its predecessor's and from the same index, and
/// once heads carry counters every later head does.
pub fn check_step(
    height: u64,
    previous: Option<&HeadCounter>,
    current: Option<&HeadCounter>,
) -> Result<(), CounterFailure> {
    match (previous, current) {
        (None, _) => Ok(()),
        (Some(p), None) => Err(CounterFailure::Dropped { height, previous: p.value }),
        (Some(p), Some(c)) if c.index != p.index => {
            Err(CounterFailure::IndexChanged { height, index: c.index, previous: p.index })
        }
        (Some(p), Some(c)) if c.value <= p.value => {
            Err(CounterFailure::NotIncreasing { height, value: c.value, previous: p.value })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: u32 = 0x0180_0010;

    fn head(value: u64, reset_count: u32) -> HeadCounter {
        HeadCounter { value, reset_count, index: INDEX }
    }

    fn tpm(value: Option<u64>, reset_count: u32) -> CounterObservation {
        CounterObservation { index: INDEX, value, reset_count, max_orderly_count: 255 }
    }

    #[test]
    fn same_reset_allows_exactly_one_increment() {
        let h = head(1000, 7);
        assert_eq!(check_newest(Some((40, &h)), 41, &tpm(Some(1000), 7)), Ok(()));
        assert_eq!(check_newest(Some((40, &h)), 41, &tpm(Some(1001), 7)), Ok(()));
        let err = check_newest(Some((40, &h)), 41, &tpm(Some(1002), 7)).unwrap_err();
        assert_eq!(
            err,
            CounterFailure::RolledBack {
                height: 40,
                head_value: 1000,
                head_reset_count: 7,
                index: INDEX,
                tpm_value: 1002,
                tpm_reset_count: 7,
                allowed: 1001
            }
        );
        assert!(err.to_string().contains("rolled back or truncated"), "{err}");
        assert!(err.to_string().starts_with("head height 40: "), "{err}");
        // Low bits all ones without a reset is no excuse.
        assert!(check_newest(Some((40, &h)), 41, &tpm(Some(1023), 7)).is_err());
    }

    #[test]
    fn after_a_reset_the_orderly_jump_stays_in_the_window() {
        // 1000 = 0x3e8: the window is 0x300..=0x3ff; an unclean reset leaves 0x3ff = 1023.
        let h = head(1000, 7);
        assert_eq!(check_newest(Some((40, &h)), 41, &tpm(Some(1023), 8)), Ok(()));
        // A clean reset (no jump, low bits not all ones): one increment only.
        assert_eq!(check_newest(Some((40, &h)), 41, &tpm(Some(1001), 8)), Ok(()));
        assert!(check_newest(Some((40, &h)), 41, &tpm(Some(1002), 8)).is_err());
        // The next window's end is not reachable from 1000 by one increment and one jump.
        assert!(matches!(
            check_newest(Some((40, &h)), 41, &tpm(Some(1279), 8)),
            Err(CounterFailure::RolledBack { allowed: 1023, .. })
        ));
        // The newest head at 1023 (window end) may see its increment roll into the next window: 1024 | 255.
        assert_eq!(check_newest(Some((40, &head(1023, 7))), 41, &tpm(Some(1279), 8)), Ok(()));
        assert_eq!(allowed_tpm_value(&head(767, 1), 1023, 2, 255), 1023);
        assert_eq!(allowed_tpm_value(&head(766, 1), 1023, 2, 255), 767);
        assert_eq!(allowed_tpm_value(&head(u64::MAX, 1), u64::MAX, 2, 255), u64::MAX);
    }

    #[test]
    fn tpm_below_the_head_or_another_index_is_refused() {
        let h = head(1000, 7);
        let err = check_newest(Some((3, &h)), 4, &tpm(Some(999), 7)).unwrap_err();
        assert!(matches!(&err, CounterFailure::TpmBehind { height: 3, tpm, .. } if tpm == "999"), "{err:?}");
        let err = check_newest(Some((3, &h)), 4, &tpm(None, 7)).unwrap_err();
        assert!(err.to_string().contains("is unused (never incremented)"), "{err}");
        let other = CounterObservation { index: 0x0180_0011, ..tpm(Some(1000), 7) };
        let err = check_newest(Some((3, &h)), 4, &other).unwrap_err();
        assert_eq!(err, CounterFailure::OtherIndex { height: 3, head_index: INDEX, tpm_index: 0x0180_0011 });
        assert!(err.to_string().contains("counter_index = \"0x01800010\""), "{err}");
    }

    #[test]
    fn a_log_without_counter_heads_needs_an_unused_counter() {
        assert_eq!(check_newest(None, 0, &tpm(None, 1)), Ok(()));
        assert_eq!(check_newest(None, 12, &tpm(None, 1)), Ok(()));
        let err = check_newest(None, 12, &tpm(Some(356), 1)).unwrap_err();
        assert_eq!(err, CounterFailure::UsedByMissingHeads { height: 12, index: INDEX, tpm_value: 356 });
        assert!(err.to_string().contains("rolled back or truncated"), "{err}");
    }

    #[test]
    fn chain_steps() {
        let (a, b) = (head(5, 1), head(6, 1));
        assert_eq!(check_step(0, None, None), Ok(()));
        assert_eq!(check_step(1, None, Some(&a)), Ok(()));
        assert_eq!(check_step(2, Some(&a), Some(&b)), Ok(()));
        assert_eq!(check_step(2, Some(&a), Some(&head(300, 2))), Ok(()));
        assert_eq!(
            check_step(2, Some(&b), Some(&a)),
            Err(CounterFailure::NotIncreasing { height: 2, value: 5, previous: 6 })
        );
        assert_eq!(
            check_step(2, Some(&a), Some(&a)),
            Err(CounterFailure::NotIncreasing { height: 2, value: 5, previous: 5 })
        );
        assert_eq!(check_step(9, Some(&a), None), Err(CounterFailure::Dropped { height: 9, previous: 5 }));
        let other = HeadCounter { index: 0x0180_0011, ..b };
        assert_eq!(
            check_step(2, Some(&a), Some(&other)),
            Err(CounterFailure::IndexChanged { height: 2, index: 0x0180_0011, previous: INDEX })
        );
    }
}
