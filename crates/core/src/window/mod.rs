//! Event-time tumbling windows: the window written in the metrics SQL.

pub mod aggregate;
pub mod bounds;
pub mod keys;
pub mod operator;
pub mod spec;
pub mod state;
pub mod watermark;

pub use bounds::{EventTimeBounds, TimeLimits};
pub use operator::{Sorted, WindowError, WindowOperator};
pub use spec::{WindowSpec, WindowSpecError};
pub use watermark::PartitionTime;
