//! Event-time tumbling windows: the window written in the metrics SQL.

pub mod aggregate;
pub mod spec;
pub mod watermark;

pub use spec::{WindowSpec, WindowSpecError};
