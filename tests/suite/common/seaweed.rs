//! SeaweedFS for the tests of the S3 warehouse and the REST catalog: `weed mini` (S3 API and
//! Iceberg REST catalog in one process) on loopback ports of its own, started once per test
//! binary and killed with it. `scripts/seaweedfs.sh install` puts the binary in place.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::proxy::Proxy;

/// The access key the server is started with (also the REST catalog's OAuth2 client id).
pub const ACCESS_KEY: &str = "campaign";
/// The secret key (also the REST catalog's OAuth2 client secret).
pub const SECRET_KEY: &str = "campaign-secret";
/// The S3 bucket for warehouses of SQL catalogs.
pub const BUCKET: &str = "warehouse";
/// The table bucket the REST catalog serves.
pub const TABLE_BUCKET: &str = "iceberg-tables";

/// A running SeaweedFS.
pub struct Seaweed {
    /// `http://127.0.0.1:port` of the S3 API.
    pub s3_endpoint: String,
    /// `http://127.0.0.1:port` of the Iceberg REST catalog.
    pub catalog_uri: String,
    /// Its data folder (kept while the test binary runs).
    pub dir: PathBuf,
}

/// The SeaweedFS shared by the tests of this binary, started on first use.
pub fn seaweed() -> &'static Seaweed {
    static SEAWEED: OnceLock<Seaweed> = OnceLock::new();
    SEAWEED.get_or_init(|| start(None))
}

/// A SeaweedFS whose S3 API and REST catalog clients reach only through proxies that a test
/// can cut, to play an outage of either.
pub struct ProxiedSeaweed {
    /// The server (its `s3_endpoint` and `catalog_uri` lead to the proxies).
    pub server: Seaweed,
    /// In front of the S3 API (also the endpoint the REST catalog hands out for its tables).
    pub s3: Proxy,
    /// In front of the REST catalog.
    pub catalog: Proxy,
}

/// The proxied SeaweedFS shared by the tests of this binary, started on first use.
pub fn proxied_seaweed() -> &'static ProxiedSeaweed {
    static SEAWEED: OnceLock<ProxiedSeaweed> = OnceLock::new();
    SEAWEED.get_or_init(|| {
        let (s3_port, catalog_port) = (free_pair(), free_pair());
        let s3_proxy = format!("127.0.0.1:{}", super::free_port());
        let catalog_proxy = format!("127.0.0.1:{}", super::free_port());
        let s3 = Proxy::start(&s3_proxy, &format!("127.0.0.1:{s3_port}"));
        let catalog = Proxy::start(&catalog_proxy, &format!("127.0.0.1:{catalog_port}"));
        let mut server = start(Some(Ports {
            s3: s3_port,
            iceberg: catalog_port,
            external_s3: format!("http://{s3_proxy}"),
        }));
        server.catalog_uri = format!("http://{catalog_proxy}");
        ProxiedSeaweed {
            server,
            s3,
            catalog,
        }
    })
}

/// The S3 and REST catalog ports a server is started on, and the S3 endpoint it hands out.
#[derive(Clone)]
struct Ports {
    s3: u16,
    iceberg: u16,
    external_s3: String,
}

fn weed_binary() -> PathBuf {
    super::installed("WEED_BIN", "seaweedfs.sh", "path")
}

/// A free port whose gRPC twin (port + 10000, SeaweedFS's default) is free too, both below the
/// ephemeral range (see [`super::free_port`]).
fn free_pair() -> u16 {
    // Where the ephemeral range starts too low to fit both below it, any twin under 65536 does.
    let below = Some(super::ephemeral_start())
        .filter(|start| *start > 21_000)
        .unwrap_or(65_536);
    loop {
        let port = super::free_port();
        if u32::from(port) + 10_000 < below
            && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        {
            return port;
        }
    }
}

/// Starts a server, on other ports when one it was given was taken before it could bind it
/// (the ports of its own servers inside: `ports` stay as given).
fn start(ports: Option<Ports>) -> Seaweed {
    const ATTEMPTS: usize = 3;
    let mut exits = Vec::new();
    for _ in 0..ATTEMPTS {
        match try_start(ports.clone()) {
            Ok(server) => return server,
            Err(exited) => exits.push(exited),
        }
    }
    panic!(
        "weed mini exited at start {ATTEMPTS} times: {}",
        exits.join("; ")
    );
}

/// A started server, or how it exited at start.
fn try_start(ports: Option<Ports>) -> Result<Seaweed, String> {
    let dir = super::server_dir("seaweedfs");
    let [master, volume, filer, admin] = [(); 4].map(|_| free_pair());
    let ports = ports.unwrap_or_else(|| {
        let s3 = free_pair();
        Ports {
            s3,
            iceberg: free_pair(),
            external_s3: format!("http://127.0.0.1:{s3}"),
        }
    });
    let (s3, iceberg) = (ports.s3, ports.iceberg);
    let s3_endpoint = ports.external_s3;
    let mut command = Command::new(weed_binary());
    command
        .arg("mini")
        .arg(format!("-dir={}", dir.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
        .args([
            "-master.telemetry=false",
            // As on real S3: writing to a bucket that does not exist fails.
            "-s3.autoCreateBucket=false",
            "-s3.port.lance=0",
            "-webdav.port=0",
        ])
        .arg(format!("-bucket={BUCKET}"))
        .arg(format!("-tableBucket={TABLE_BUCKET}"))
        .arg(format!("-master.port={master}"))
        .arg(format!("-volume.port={volume}"))
        .arg(format!("-filer.port={filer}"))
        .arg(format!("-s3.port={s3}"))
        .arg(format!("-s3.port.iceberg={iceberg}"))
        .arg(format!("-s3.externalUrl={s3_endpoint}"))
        .arg(format!("-admin.port={admin}"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .current_dir(&dir)
        .stdout(std::fs::File::create(dir.join("weed.out")).expect("output file"))
        .stderr(std::fs::File::create(dir.join("weed.log")).expect("log file"));
    let mut child = super::spawn_tied(command);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut exited = None;
    let mut wait_until = |what: &str, ready: &dyn Fn() -> bool| {
        while exited.is_none() && !ready() {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(format!("{status}, see {}/weed.log", dir.display()));
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weed mini: {what} within 60 s; see {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for port in [s3, iceberg] {
        wait_until(&format!("listening on {port}"), &|| {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    // The buckets are created after the servers listen: wait until the REST catalog serves the
    // table bucket to a client with a token.
    wait_until(&format!("serving {TABLE_BUCKET}"), &|| {
        table_bucket_served(iceberg)
    });
    if let Some(exited) = exited {
        let _ = child.wait();
        return Err(exited);
    }
    std::mem::forget(child);
    Ok(Seaweed {
        s3_endpoint,
        catalog_uri: format!("http://127.0.0.1:{iceberg}"),
        dir,
    })
}

/// Whether the REST catalog on `port` lists the table bucket's namespaces for a token holder.
fn table_bucket_served(port: u16) -> bool {
    let form = format!("grant_type=client_credentials&client_id={ACCESS_KEY}&client_secret={SECRET_KEY}&scope=catalog");
    let Some((_, body)) = http(port, "POST", "/v1/oauth/tokens", None, &form) else {
        return false;
    };
    let Some(token) = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["access_token"].as_str().map(str::to_string))
    else {
        return false;
    };
    let path = format!("/v1/{TABLE_BUCKET}/namespaces");
    http(port, "GET", &path, Some(&token), "").is_some_and(|(status, _)| status == 200)
}

/// A plain HTTP/1.0 request on loopback: (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    form: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}
