//! The input files and directories, watched through inotify (not polled).
//!
//! A directory is watched with its subdirectories (new ones are added as
//! they appear); a file is watched through its parent directory, filtered by
//! name, because editors and `kubectl`-style tools replace a file by
//! renaming a new one over it (a watch on the file itself would follow the
//! old inode). Any event is one [`Event::Files`]: `run` re-reads the inputs
//! and the change tracking finds what changed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::{Event, Sender};

/// What a watch descriptor stands for.
enum Watched {
    /// A directory input (or one under it): every entry counts.
    Dir(PathBuf),
    /// The parent of file inputs: only these names count.
    ParentOf(PathBuf, Vec<OsString>),
}

fn dir_flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

struct Watcher {
    inotify: Inotify,
    watched: HashMap<WatchDescriptor, Watched>,
}

impl Watcher {
    fn add_dir(&mut self, dir: &Path) -> Result<(), String> {
        let wd = self
            .inotify
            .add_watch(dir, dir_flags())
            .map_err(|e| format!("inotify watch on {}: {e}", dir.display()))?;
        self.watched.insert(wd, Watched::Dir(dir.to_path_buf()));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    self.add_dir(&e.path())?;
                }
            }
        }
        Ok(())
    }

    fn add_file(&mut self, file: &Path) -> Result<(), String> {
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        if let Some(Watched::ParentOf(_, names)) =
            self.watched.values_mut().find(|w| matches!(w, Watched::ParentOf(p, _) if *p == parent))
        {
            names.push(name);
            return Ok(());
        }
        let wd = self
            .inotify
            .add_watch(&parent, dir_flags())
            .map_err(|e| format!("inotify watch on {}: {e}", parent.display()))?;
        self.watched.insert(wd, Watched::ParentOf(parent, vec![name]));
        Ok(())
    }
}

/// Watch `inputs` on a thread of its own, sending [`Event::Files`] on
/// every change until the receiver is gone. Errors setting up the watches
/// are returned (an input that cannot be watched would silently go stale).
pub fn watch(inputs: &[PathBuf], tx: Sender) -> Result<(), String> {
    if inputs.is_empty() {
        return Ok(());
    }
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| format!("inotify: {e}"))?;
    let mut w = Watcher { inotify, watched: HashMap::new() };
    for p in inputs {
        if p.is_dir() {
            w.add_dir(p)?;
        } else {
            w.add_file(p)?;
        }
    }
    std::thread::Builder::new()
        .name("inotify".into())
        .spawn(move || loop {
            let events = match w.inotify.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("reading inotify events: {e}; input files are no longer followed");
                    return;
                }
            };
            let mut changed = false;
            let mut new_dirs = Vec::new();
            for ev in events {
                match w.watched.get(&ev.wd) {
                    Some(Watched::Dir(dir)) => {
                        changed = true;
                        if ev.mask.contains(AddWatchFlags::IN_ISDIR)
                            && ev.mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                        {
                            if let Some(name) = &ev.name {
                                new_dirs.push(dir.join(name));
                            }
                        }
                    }
                    Some(Watched::ParentOf(_, names)) => {
                        changed |= ev.name.as_ref().is_some_and(|n| names.contains(n))
                            || ev
                                .mask
                                .intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF);
                    }
                    None => {}
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    w.watched.remove(&ev.wd);
                }
            }
            for d in new_dirs {
                if let Err(e) = w.add_dir(&d) {
                    log::warn!("{e}");
                }
            }
            if changed && tx.send(Event::Files).is_err() {
                return;
            }
        })
        .map_err(|e| format!("starting the inotify thread: {e}"))?;
    Ok(())
}
