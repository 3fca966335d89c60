//! The appliance's log machinery: the writer, the sealer, the timestamper, the cosigner, the indexer.
//!
//! The pure log math these actors use (entries, the Merkle tree, block heads, the TPM counter rules, the
//! names of the appliance's own records) is the core's (`anchorlog_core`), shared with the verifiers.

#[cfg(feature = "server")]
pub mod appender;
#[cfg(feature = "server")]
pub mod clockwatch;
#[cfg(feature = "server")]
pub mod cosigner;
#[cfg(feature = "server")]
pub mod event;
pub mod indexer;
#[cfg(feature = "server")]
pub mod internal;
#[cfg(feature = "server")]
pub mod outage;
#[cfg(all(feature = "server", feature = "postgres"))]
pub mod pg_node;
#[cfg(feature = "server")]
pub mod sealer;
#[cfg(feature = "server")]
pub mod timestamper;
