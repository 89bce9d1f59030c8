//! Network namespaces, entered on a dedicated thread.
//!
//! `setns(2)` changes the namespace of the calling *thread* only, and a
//! netlink socket stays in the namespace it was opened in. So namespace work
//! never switches the caller's thread back and forth (a forgotten switch-back
//! would leave e.g. a logging or datastore thread in the pod's netns): it
//! spawns a short-lived thread, enters the namespace there, opens one netlink
//! socket for the whole batch, runs the closure and joins.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};
use crate::netlink::Netlink;

/// The calling thread's netns. `/proc/self` would name the main thread's.
const THREAD_SELF_NETNS: &str = "/proc/thread-self/ns/net";

/// An open network namespace (`/run/netns/<name>`, `/proc/<pid>/ns/net`, ...).
/// Holding the file keeps the namespace alive even if its bind mount goes away.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Open the namespace at `path` (what CNI_NETNS holds).
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound { op: "open netns", what: path.display().to_string() }
            } else {
                Error::io(format!("open netns {}", path.display()), e)
            }
        })?;
        let ns = Netns { file, path };
        // A regular file passed by mistake would only fail later, in setns,
        // on another thread; check the filesystem type now.
        let stat = nix::sys::statfs::fstatfs(&ns.file)
            .map_err(|e| Error::io(format!("statfs {}", ns.path.display()), e.into()))?;
        let t = stat.filesystem_type();
        if t != nix::sys::statfs::NSFS_MAGIC {
            return Err(Error::invalid(
                format!("netns {}", ns.path.display()),
                "not a network namespace file (nsfs)",
            ));
        }
        Ok(ns)
    }

    /// The calling thread's current namespace.
    pub fn current() -> Result<Netns> {
        Netns::open(THREAD_SELF_NETNS)
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when both handles refer to the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &Netns) -> Result<bool> {
        Ok(self.inode()? == other.inode()?)
    }

    /// True when the calling thread is in this namespace.
    pub fn is_current(&self) -> Result<bool> {
        let me = std::fs::metadata(THREAD_SELF_NETNS)
            .map_err(|e| Error::io(format!("stat {THREAD_SELF_NETNS}"), e))?;
        Ok(self.inode()? == (me.dev(), me.ino()))
    }

    fn inode(&self) -> Result<(u64, u64)> {
        let m =
            self.file.metadata().map_err(|e| Error::io(format!("stat netns {}", self.path.display()), e))?;
        Ok((m.dev(), m.ino()))
    }

    /// Run `f` on a new thread that has entered this namespace, with a netlink
    /// socket opened there, and return its result. The calling thread's
    /// namespace is never changed. A panic in `f` is propagated to the caller.
    ///
    /// `f` may borrow from the caller (the thread is scoped). Everything `f`
    /// does — netlink through the given socket, [`crate::Sysctl`] reads and
    /// writes, sockets it opens — happens in this namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Netlink) -> Result<T> + Send,
        T: Send,
    {
        self.run_thread(|| {
            let mut nl = Netlink::new()?;
            f(&mut nl)
        })
    }

    /// [`Netns::run`] without waiting: `f` runs on a thread of `scope` that
    /// enters this namespace (the handle moves there) and opens a netlink
    /// socket there; the returned handle gives its result when joined (a
    /// panic in `f` comes back as the join's `Err`). For a caller with other
    /// work to do meanwhile, e.g. a DEL whose veth deletion waits on the
    /// kernel for milliseconds. The calling thread's namespace is never
    /// changed.
    pub fn spawn_run<'scope, T, F>(
        self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        f: F,
    ) -> Result<std::thread::ScopedJoinHandle<'scope, Result<T>>>
    where
        F: FnOnce(&mut Netlink) -> Result<T> + Send + 'scope,
        T: Send + 'scope,
    {
        spawn_in(scope, self, move || {
            let mut nl = Netlink::new()?;
            f(&mut nl)
        })
    }

    /// Like [`Netns::run`] without opening a netlink socket (sysctls only,
    /// or a closure that opens its own sockets).
    pub fn run_thread<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send,
        T: Send,
    {
        std::thread::scope(|s| match spawn_in(s, self, f)?.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }
}

/// `f` on a new thread of `scope` that first enters `ns` (owned or
/// borrowed): the one place a thread changes namespace.
fn spawn_in<'scope, T, N, F>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    ns: N,
    f: F,
) -> Result<std::thread::ScopedJoinHandle<'scope, Result<T>>>
where
    N: std::borrow::Borrow<Netns> + Send + 'scope,
    F: FnOnce() -> Result<T> + Send + 'scope,
    T: Send + 'scope,
{
    let path = ns.borrow().path.clone();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn_scoped(scope, move || {
            let ns = ns.borrow();
            setns(ns.file.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::io(format!("setns into {}", ns.path.display()), e.into()))?;
            f()
        })
        .map_err(|e| Error::io(format!("spawn a thread for netns {}", path.display()), e))
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = Netns::open(f.path()).unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        assert!(e.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn a_missing_netns_is_not_found() {
        let e = Netns::open("/run/netns/does-not-exist-nlu").unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[test]
    fn run_enters_the_namespace_on_another_thread_only() {
        let ns = testbed::Netns::new("nlu");
        let target = Netns::open(ns.path()).unwrap();
        let before = Netns::current().unwrap();
        assert!(!target.is_current().unwrap());
        let inside = target.run_thread(|| target.is_current()).unwrap();
        assert!(inside);
        // The caller's thread did not move.
        assert!(before.is_current().unwrap());
        assert!(!target.same_as(&before).unwrap());
    }

    #[test]
    fn spawn_run_works_inside_while_the_caller_goes_on() {
        let ns = testbed::Netns::new("nlu");
        let target = Netns::open(ns.path()).unwrap();
        let before = Netns::current().unwrap();
        let (inside, lo) = std::thread::scope(|s| {
            let h = Netns::open(ns.path())
                .unwrap()
                .spawn_run(s, |nl| Ok((target.is_current()?, nl.link_by_name("lo")?)))
                .unwrap();
            // The caller's thread did not move, even while the other runs.
            assert!(before.is_current().unwrap());
            h.join().unwrap().unwrap()
        });
        assert!(inside);
        assert_eq!(lo.name, "lo");
        assert!(before.is_current().unwrap());
    }

    #[test]
    fn a_proc_pid_path_opens_the_same_namespace() {
        let ns = testbed::Netns::new("nlu");
        let mut child = ns.cmd("sleep").arg("30").spawn().unwrap();
        // `ip netns exec` execs sleep in the same process once it has entered.
        let by_pid = format!("/proc/{}/ns/net", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let named = Netns::open(ns.path()).unwrap();
        let mut same = false;
        while !same && std::time::Instant::now() < deadline {
            same = Netns::open(&by_pid).and_then(|p| p.same_as(&named)).unwrap_or(false);
            if !same {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(same, "{by_pid} never became the netns {}", ns.name());
    }

    #[test]
    fn run_returns_the_closure_error() {
        let ns = testbed::Netns::new("nlu");
        let target = Netns::open(ns.path()).unwrap();
        let e = target.run(|_nl| -> Result<()> { Err(Error::invalid("thing", "because")) }).unwrap_err();
        assert_eq!(e.to_string(), "invalid thing: because");
    }
}
