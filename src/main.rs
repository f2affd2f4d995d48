use std::process::ExitCode;

use clap::Parser;

use campaign_pipeline::cli::{self, Cli};

/// jemalloc for every allocation, librdkafka's too: glibc's arenas kept the memory a steady
/// runner freed (its resident memory kept growing faster than its heap in use, even with
/// `malloc_trim` after each commit), and jemalloc's background threads hand freed pages back
/// on their own.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation: freed pages go back to the system after 1 s
/// instead of 10 s, which keeps a runner catching up a backlog within its configuration's bound
/// (`pipeline::memory`; at 10 s a peak went over it) with no CPU cost visible among the noise
/// (returning them at once, 0 s, cost much more CPU end to end).
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
static malloc_conf: &[u8; 20] = b"dirty_decay_ms:1000\0";

fn main() -> ExitCode {
    cli::run(Cli::parse())
}
