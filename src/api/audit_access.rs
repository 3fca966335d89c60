//! The audit-access record (PCI DSS 10.2.1.3, docs/FORMAT.md §12): every auditor read of log content leaves an
//! event of the appliance's own source in the log itself before the answer is sent.
//!
//! Its own module because every read route uses it (events, receipts, search, export, the stream): kept in the
//! search module, it tied `read` and `search` into an import cycle.

use super::{ApiError, AppState};
use crate::ledger::internal::{audit_access_body, internal_event};
use crate::tls::Principal;

/// Records an auditor's read of log content as an event of the appliance's own source, and waits until it
/// is committed: the answer is only sent once the access is on record. Returns the record's seq.
pub(super) async fn log_access(
    state: &AppState,
    principal: &Principal,
    endpoint: &str,
    parameters: &[(&str, String)],
    result_count: Option<u64>,
) -> Result<u64, ApiError> {
    let event = internal_event(&audit_access_body(&principal.name, endpoint, parameters, result_count));
    match state.appender.append(vec![event]).await {
        Ok(done) => {
            done.first().map(|a| a.seq).ok_or_else(|| ApiError::internal("audit record", &"not stored"))
        }
        Err(e) => Err(ApiError::append("recording the audit access failed", &e)),
    }
}
