use std::process::ExitCode;

use clap::Parser;

use campaign_pipeline::cli::{self, Cli};

/// jemalloc for every allocation, librdkafka's too: glibc's arenas kept the memory a steady
/// runner freed (its resident memory kept growing faster than its heap in use, even with
/// `malloc_trim` after each commit), and jemalloc's background threads hand freed pages back
/// on their own.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation.
/// - One arena for every thread: librdkafka's threads allocate each message and the source
///   thread frees it, the SQL's workers allocate columns and the commit frees them, so pages
///   freed in one thread's arena sat unused while another's faulted fresh ones in. One arena
///   reuses them, and a peak is one peak rather than one per arena (the busy threads are few,
///   so they seldom contend for it).
/// - Freed pages go back to the system after 5 s instead of 10 s, which keeps a runner catching
///   up a backlog within its configuration's bound (`pipeline::memory`; at 10 s, with an arena
///   per thread, a peak went over it). Returning them sooner had the kernel fault the same
///   pages in again and again, and returning them at once cost much more CPU end to end.
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
static malloc_conf: &[u8; 30] = b"narenas:1,dirty_decay_ms:5000\0";

fn main() -> ExitCode {
    cli::run(Cli::parse())
}
