//! `serve` over a pipeline's tables with a login, and the PostgreSQL clients that query it.
#![allow(dead_code)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, text, TestPipeline};

pub const PASSWORD: &str = "s3cret-for-tests";

pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `;`-separated fields with numbers in one form (PostgreSQL prints the float 0 as `0`, the
/// CSV of `query` as `0.0`).
pub fn normalized(row: &str) -> String {
    row.split(';')
        .map(|field| match (field.parse::<i64>(), field.parse::<f64>()) {
            (Ok(_), _) | (_, Err(_)) => field.to_string(),
            (Err(_), Ok(number)) => number.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Waits until the SQL endpoint on `port` accepts connections (at most a minute).
pub fn wait_for_endpoint(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the SQL endpoint did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pipeline whose tables hold 20,000 generated events, and `serve` over them.
pub struct Served {
    pub pipeline: TestPipeline,
    pub sql_port: u16,
    _server: KillOnDrop,
}

impl Served {
    pub fn start() -> Self {
        let pipeline = TestPipeline::new();
        pipeline.edit_config(|yaml| {
            format!(
                "{yaml}sql_endpoint:\n  statement_timeout: 3s\n  max_result_rows: 5000\n  max_connections: 12\n"
            )
        });
        assert!(pipeline.cli(&["setup"]).status.success());
        let generate = pipeline.cli(&[
            "generate",
            "--count",
            "20000",
            "--seed",
            "15",
            "--campaigns",
            "4",
        ]);
        assert!(generate.status.success(), "{}", text(&generate));
        let run = pipeline.cli(&["run", "--until-caught-up", "--flush-open-windows"]);
        assert!(run.status.success(), "{}", text(&run));

        let sql_port = free_port();
        let server = KillOnDrop(
            pipeline
                .command(&[
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{}", free_port()),
                    "--sql-listen",
                    &format!("127.0.0.1:{sql_port}"),
                ])
                .env("CAMPAIGN_SQL_USER", "analyst")
                .env("CAMPAIGN_SQL_PASSWORD", PASSWORD)
                .stdout(Stdio::null())
                .spawn()
                .expect("start serve"),
        );
        wait_for_endpoint(sql_port);
        Self {
            pipeline,
            sql_port,
            _server: server,
        }
    }

    pub fn url(&self, password: &str) -> String {
        format!(
            "postgresql://analyst:{password}@127.0.0.1:{}/campaigns",
            self.sql_port
        )
    }

    /// psql's unaligned, tuples-only output of `sql` (`;`-separated columns).
    pub fn psql(&self, sql: &str) -> Output {
        Command::new("psql")
            .args([
                &self.url(PASSWORD),
                "--no-psqlrc",
                "-X",
                "-A",
                "-t",
                "-F",
                ";",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql (Debian package postgresql-client)")
    }

    pub fn psql_rows(&self, sql: &str) -> Vec<String> {
        let out = self.psql(sql);
        assert!(out.status.success(), "psql {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(normalized)
            .collect()
    }

    /// The same statement through `query`, as `;`-separated rows.
    pub fn query_rows(&self, sql: &str) -> Vec<String> {
        let out = self.pipeline.cli(&["query", "--format", "csv", sql]);
        assert!(out.status.success(), "query {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter(|line| !line.is_empty())
            .map(|line| normalized(&line.replace(',', ";")))
            .collect()
    }
}
