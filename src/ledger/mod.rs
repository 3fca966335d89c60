//! The log itself: entries, the Merkle tree, block heads, and (in the appliance) the writer and the sealer.

#[cfg(feature = "server")]
pub mod appender;
#[cfg(feature = "server")]
pub mod clockwatch;
#[cfg(feature = "server")]
pub mod cosigner;
pub mod counter;
pub mod entry;
#[cfg(feature = "server")]
pub mod event;
pub mod head;
pub mod indexer;
#[cfg(feature = "server")]
pub mod internal;
pub mod merkle;
#[cfg(feature = "server")]
pub mod outage;
pub mod record_types;
#[cfg(feature = "server")]
pub mod sealer;
#[cfg(feature = "server")]
pub mod timestamper;
