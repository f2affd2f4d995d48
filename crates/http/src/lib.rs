//! The front door of the product's HTTP servers (the dashboard, the event collector): a client
//! cannot exhaust the process through it. Connections are capped (one over the cap gets 503
//! and is closed), a request's headers must arrive within a deadline and fit a bounded buffer
//! (a client sending a byte a second is dropped), and shutdown lets requests in flight finish
//! for a bounded time. Bodies are the handlers' to bound: only they know their limits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What one server allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (each request of a kept-alive
    /// connection too).
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight before it drops them.
    pub shutdown_grace: Duration,
}

/// The largest buffer a connection reads a request's headers into.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The answer to a connection over the cap.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Serves `app` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish within `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken: the
                    // listener itself is fine, so wait a moment instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, limits.header_timeout));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {:?}: dropped them",
            limits.shutdown_grace
        );
    }
}

/// Tells a connection over the cap to come back later, and closes it.
async fn refuse(mut stream: TcpStream, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn started(
        limits: ServerLimits,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, limits, async {
            let _ = stopped.await;
        }));
        (address, stop)
    }

    async fn answer(stream: &mut TcpStream) -> String {
        let mut text = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text)).await;
        text
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_gets_503_and_the_others_are_served() {
        let (address, _stop) = started(ServerLimits {
            max_connections: 1,
            header_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(1),
        })
        .await;
        // The first connection holds the only place, sending nothing yet.
        let mut first = TcpStream::connect(address).await.unwrap();
        first.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut second = TcpStream::connect(address).await.unwrap();
        let refused = answer(&mut second).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        first
            .write_all(b"Host: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let served = answer(&mut first).await;
        assert!(
            served.starts_with("HTTP/1.1 200") && served.ends_with("hello"),
            "{served}"
        );
    }

    #[tokio::test]
    async fn a_client_too_slow_with_its_headers_is_dropped_and_frees_its_place() {
        let (address, _stop) = started(ServerLimits {
            max_connections: 1,
            header_timeout: Duration::from_millis(300),
            shutdown_grace: Duration::from_secs(1),
        })
        .await;
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET / HT").await.unwrap();
        // The server closes it (with 408 or without a word) once the deadline passes.
        let dropped = answer(&mut slow).await;
        assert!(!dropped.contains("hello"), "{dropped}");
        let mut next = TcpStream::connect(address).await.unwrap();
        next.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let served = answer(&mut next).await;
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    }

    #[tokio::test]
    async fn headers_larger_than_the_buffer_are_refused() {
        let (address, _stop) = started(ServerLimits {
            max_connections: 4,
            header_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(1),
        })
        .await;
        let mut big = TcpStream::connect(address).await.unwrap();
        let header = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2 * MAX_HEADER_BYTES)
        );
        let _ = big.write_all(header.as_bytes()).await;
        let refused = answer(&mut big).await;
        assert!(
            refused.starts_with("HTTP/1.1 431") || refused.is_empty(),
            "{refused}"
        );
        assert!(!refused.contains("hello"));
    }
}
