//! A loopback TCP port inside a netns forwarded to an address in the
//! test's own netns. The plugins run in the node netns, whose loopback cannot
//! reach the etcd that [`crate::Etcd::start`] starts on the test's loopback; this
//! bridges exactly that without any link or route: the listening socket is
//! created while the thread is inside the node netns (a socket keeps the
//! netns it was created in), then the thread returns to its own netns before
//! connecting onwards.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

/// A running forward ([`NetnsForward::start`]); stops accepting on drop.
pub struct NetnsForward {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn listen_in(netns: &Path, port: u16) -> Result<TcpListener, String> {
    let own = File::open("/proc/thread-self/ns/net").map_err(|e| format!("own netns: {e}"))?;
    let target = File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {}: {e}", netns.display()))?;
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("bind 127.0.0.1:{port}: {e}"));
    // Back home before anything else happens on this thread; if that fails the
    // thread must not go on (its onward connections would stay in the netns).
    setns(&own, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns back: {e}"))?;
    listener
}

fn pipe(client: TcpStream, target: SocketAddr) {
    let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    // gRPC (etcd) sends small frames and waits for their answers: with Nagle's
    // algorithm on either hop, each request waits for a delayed ACK (~40 ms).
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else { return };
    let (mut c, mut u) = (client, upstream);
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut u, &mut c);
    let _ = c.shutdown(Shutdown::Write);
    let _ = t.join();
}

impl NetnsForward {
    /// Listen on `127.0.0.1:<port>` inside `netns` and forward every
    /// connection to `target`.
    pub fn start(netns: &Path, port: u16, target: SocketAddr) -> Result<NetnsForward, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let ns: PathBuf = netns.to_path_buf();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let listener = match listen_in(&ns, port).and_then(|l| {
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(l)
            }) {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        std::thread::spawn(move || pipe(conn, target));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(NetnsForward { stop, thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("forwarder thread died".into()),
        }
    }
}

impl Drop for NetnsForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn forwards_from_inside_a_netns() {
        let ns = crate::Netns::new("cfw");
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = upstream.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = upstream.accept().unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase())).unwrap();
        });
        let _fw = NetnsForward::start(&ns.path(), 2379, addr).unwrap();
        // busybox-free check: bash's /dev/tcp inside the netns.
        let out = ns.exec(&["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/2379; printf ping >&3; head -c 4 <&3"]);
        assert_eq!(out, "PING");
    }
}
