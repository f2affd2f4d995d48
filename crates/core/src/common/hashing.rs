//! Hash maps for the per-event path, keyed by partition numbers, offsets or partition values.
//!
//! The standard library's SipHash resists collision attacks at about 20 ns a lookup; foldhash,
//! seeded at random per process as SipHash is, costs a few. The source thread does five such
//! lookups per message and the sink one per row.

/// A `HashMap` hashed with foldhash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` hashed with foldhash.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
