//! A private PostgreSQL 15 (Debian's) for the tests of the PostgreSQL catalog: its own data
//! folder and loopback port, run as the `postgres` user (initdb refuses root), started once per
//! test binary and killed with it.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running PostgreSQL.
pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:port/postgres` (trust authentication on loopback).
    pub uri: String,
    /// `127.0.0.1:port`.
    pub address: String,
}

/// The PostgreSQL shared by the tests of this binary, started on first use.
pub fn postgres() -> &'static Postgres {
    static POSTGRES: OnceLock<Postgres> = OnceLock::new();
    POSTGRES.get_or_init(start)
}

fn bin(name: &str) -> PathBuf {
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// `program` run as the `postgres` user when this process is root. The uid and gid are set on
/// the process itself, not through `runuser`: only a direct child gets the parent-death signal
/// that stops the server with the test binary (through `runuser`, every run left two servers
/// behind).
fn as_postgres(program: PathBuf) -> Command {
    let mut command = Command::new(program);
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpwnam returns a pointer to static storage, read before any other call.
        let user = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
        assert!(
            !user.is_null(),
            "no `postgres` user (Debian package postgresql)"
        );
        let (uid, gid) = unsafe { ((*user).pw_uid, (*user).pw_gid) };
        command.uid(uid).gid(gid);
    }
    command
}

fn start() -> Postgres {
    let dir = super::server_dir("postgres");
    let data = dir.join("data");
    if unsafe { libc::geteuid() } == 0 {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(status.success());
    }
    let init = as_postgres(bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .output()
        .expect("initdb (Debian package postgresql)");
    assert!(
        init.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let port = super::free_port();
    let mut command = as_postgres(bin("postgres"));
    command
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-k")
        .arg(&dir)
        .stdout(std::fs::File::create(dir.join("postgres.log")).expect("log"))
        .stderr(std::fs::File::create(dir.join("postgres.err")).expect("log"));
    let mut child = super::spawn_tied(command);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("postgres exited at start ({status}); see {}", dir.display());
        }
        assert!(
            Instant::now() < deadline,
            "postgres did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::mem::forget(child);
    Postgres {
        uri: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        address: format!("127.0.0.1:{port}"),
    }
}
