//! Event-time tumbling windows: the window written in the metrics SQL.

pub mod aggregate;
pub mod spec;
pub mod state;
pub mod watermark;

pub use spec::{WindowSpec, WindowSpecError};
