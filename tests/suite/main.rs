//! Every integration test but the simulation, one module per area, in one test binary: each
//! binary links the whole workspace and its dependencies, and building fifteen of them took
//! minutes of a clean build. `scripts/test-binaries.py` still runs each module in a process of
//! its own (with its own broker and servers), several side by side; `cargo test --test suite
//! stream::` runs one module by hand.

mod common;

mod check;
mod config;
mod dashboard;
mod dlq;
mod generate;
// Drives maintenance through the runner's test hooks (`maintain --pause-at/--pause-for/
// --rewrite-for`), which only a build with the `test-hooks` feature has.
#[cfg(feature = "test-hooks")]
mod maintain;
mod metrics;
mod object_store;
mod outage;
mod query;
mod scale;
mod setup;
mod sql_endpoint;
mod stream;
mod superset;
