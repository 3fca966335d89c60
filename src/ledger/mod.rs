//! The log itself: entries, the Merkle tree, block heads, and (in the appliance) the writer and the sealer.

#[cfg(feature = "server")]
pub mod appender;
pub mod entry;
pub mod head;
#[cfg(feature = "server")]
pub mod indexer;
pub mod merkle;
#[cfg(feature = "server")]
pub mod sealer;
