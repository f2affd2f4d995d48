//! A TCP proxy in front of a broker that a test can cut off and bring back, to play a broker
//! outage without losing the broker's in-memory data.

use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Forwards connections on `address` to a target while up; refuses them while cut.
pub struct Proxy {
    /// `127.0.0.1:port` clients connect to.
    pub address: String,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// A proxy on `address` forwarding to `target`, up.
    pub fn start(address: &str, target: &str) -> Self {
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (address, target) = (address.to_string(), target.to_string());
        let listener = TcpListener::bind(&address).expect("proxy listens");
        let (thread_up, thread_connections) = (up.clone(), connections.clone());
        let thread_address = address.clone();
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            loop {
                match (&listener, thread_up.load(Ordering::SeqCst)) {
                    // Cut: the port is closed, so connecting is refused as with a broker down.
                    (Some(_), false) => listener = None,
                    (None, true) => {
                        listener = TcpListener::bind(&thread_address).ok();
                    }
                    _ => {}
                }
                let Some(open) = &listener else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                open.set_nonblocking(true).expect("nonblocking listener");
                match open.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).expect("blocking stream");
                        if let Ok(server) = TcpStream::connect(&target) {
                            forward(client, server, &thread_connections);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            address,
            up,
            connections,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Copies bytes both ways between a client and the server until either side closes.
fn forward(client: TcpStream, server: TcpStream, connections: &Mutex<Vec<TcpStream>>) {
    let mut list = connections.lock().unwrap();
    for stream in [&client, &server] {
        if let Ok(clone) = stream.try_clone() {
            list.push(clone);
        }
    }
    drop(list);
    for (mut from, mut to) in [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ]
    .into_iter()
    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
    {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}
