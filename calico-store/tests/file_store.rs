//! The file store against the `Datastore` contract: CAS, atomic commits,
//! concurrent threads and processes, corrupt data.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use calico_store::file::FileStore;
use calico_store::{Datastore, Op, StoreError};

fn store() -> (tempfile::TempDir, FileStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(dir.path()).unwrap();
    (dir, s)
}

#[test]
fn create_is_create_if_absent() {
    let (_d, s) = store();
    let r1 = s.create("/k", b"1").unwrap();
    assert!(r1 > 0);
    let err = s.create("/k", b"2").unwrap_err();
    assert!(matches!(&err, StoreError::Conflict { key } if key == "/k"), "{err}");
    let kv = s.get("/k").unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.revision), (&b"1"[..], r1));
}

#[test]
fn update_and_delete_compare_the_revision() {
    let (_d, s) = store();
    let r1 = s.create("/k", b"1").unwrap();
    let r2 = s.update("/k", b"2", r1).unwrap();
    assert!(r2 > r1);
    // A stale revision loses and changes nothing.
    assert!(matches!(s.update("/k", b"3", r1), Err(StoreError::Conflict { .. })));
    assert!(matches!(s.delete("/k", r1), Err(StoreError::Conflict { .. })));
    assert_eq!(s.get("/k").unwrap().unwrap().value, b"2");
    // Update/delete of a missing key is a conflict too.
    assert!(matches!(s.update("/nope", b"x", 1), Err(StoreError::Conflict { .. })));
    assert!(matches!(s.delete("/nope", 1), Err(StoreError::Conflict { .. })));
    s.delete("/k", r2).unwrap();
    assert_eq!(s.get("/k").unwrap(), None);
    // Re-creating a deleted key works and gets a fresh revision.
    assert!(s.create("/k", b"4").unwrap() > r2);
}

#[test]
fn per_key_and_store_wide_revisions() {
    let (_d, s) = store();
    let ra = s.create("/a", b"a").unwrap();
    let rb = s.create("/b", b"b").unwrap();
    assert!(rb > ra);
    assert_eq!(s.revision().unwrap(), rb);
    // /a keeps the revision of its own last write.
    assert_eq!(s.get("/a").unwrap().unwrap().revision, ra);
    let listed = s.list("/").unwrap();
    assert_eq!(listed.iter().map(|kv| kv.revision).collect::<Vec<_>>(), [ra, rb]);
    // A failed commit does not move the store revision.
    let _ = s.create("/a", b"again");
    assert_eq!(s.revision().unwrap(), rb);
}

#[test]
fn multi_op_commit_is_all_or_nothing() {
    let (_d, s) = store();
    let ra = s.create("/a", b"a1").unwrap();
    let rb = s.create("/b", b"b1").unwrap();
    // Last op fails: none of the others may be applied.
    let bad = [
        Op::Update { key: "/a".into(), value: b"a2".to_vec(), revision: ra },
        Op::Create { key: "/c".into(), value: b"c".to_vec() },
        Op::Delete { key: "/b".into(), revision: rb + 100 },
    ];
    let err = s.commit(&bad).unwrap_err();
    assert!(matches!(&err, StoreError::Conflict { key } if key == "/b"), "{err}");
    assert_eq!(s.get("/a").unwrap().unwrap().value, b"a1");
    assert_eq!(s.get("/c").unwrap(), None);
    assert_eq!(s.revision().unwrap(), rb);
    // The good version applies every op at one revision.
    let good = [
        Op::Update { key: "/a".into(), value: b"a2".to_vec(), revision: ra },
        Op::Create { key: "/c".into(), value: b"c".to_vec() },
        Op::Delete { key: "/b".into(), revision: rb },
    ];
    let rev = s.commit(&good).unwrap();
    assert_eq!(s.get("/a").unwrap().unwrap().revision, rev);
    assert_eq!(s.get("/c").unwrap().unwrap().revision, rev);
    assert_eq!(s.get("/b").unwrap(), None);
    assert_eq!(s.revision().unwrap(), rev);
}

#[test]
fn conflict_names_the_first_failing_key() {
    let (_d, s) = store();
    s.create("/x", b"1").unwrap();
    s.create("/y", b"1").unwrap();
    let ops = [
        Op::Create { key: "/new".into(), value: b"1".to_vec() },
        Op::Create { key: "/y".into(), value: b"1".to_vec() },
        Op::Create { key: "/x".into(), value: b"1".to_vec() },
    ];
    assert!(matches!(s.commit(&ops), Err(StoreError::Conflict { key }) if key == "/y"));
}

#[test]
fn two_handles_on_one_directory_see_each_other() {
    let (d, s1) = store();
    let s2 = FileStore::open(d.path()).unwrap();
    let r = s1.create("/shared", b"1").unwrap();
    assert_eq!(s2.get("/shared").unwrap().unwrap().revision, r);
    s2.update("/shared", b"2", r).unwrap();
    assert_eq!(s1.get("/shared").unwrap().unwrap().value, b"2");
}

fn log_of(d: &Path) -> std::path::PathBuf {
    d.join("store.log")
}

fn assert_corrupt(err: StoreError, what: &str) {
    match err {
        StoreError::Corrupt { key, reason } => {
            assert!(key.ends_with("store.log"), "{key}");
            assert!(reason.contains(what), "{reason}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

/// The records of a log: (start, end) of each, up to the zeros after the last.
fn records(log: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok((_, n)) = calico_store::file::record::decode(&log[at..]) {
        out.push((at, at + n));
        at += n;
    }
    out
}

fn torn_files(d: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("store.log.torn-"))
        .collect()
}

/// A crash in the middle of an append leaves part of a record after the
/// last whole one (the rest of it still zeros, or its first page lost while
/// later ones reached the disk): readers see the store without it, and the
/// next commit cuts it off, keeping its bytes in a side file.
#[test]
fn a_torn_append_is_cut_off_by_the_next_commit_and_kept() {
    let (d, s) = store();
    let r1 = s.create("/k", b"1").unwrap();
    s.update("/k", &vec![b'2'; 6000], r1).unwrap();
    let whole = std::fs::read(log_of(d.path())).unwrap();
    let recs = records(&whole);
    assert_eq!(recs.len(), 3, "snapshot and two commits");
    let (start, end) = recs[2];
    let last = &whole[start..end];
    // (kept bytes, torn log): a prefix of the record, or its tail without its head.
    let mut cases: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for cut in [1, 11, 12, last.len() / 2, last.len() - 1] {
        let mut torn = whole.clone();
        torn[start + cut..end].fill(0);
        cases.push((last[..cut].to_vec(), torn));
    }
    let mut headless = whole.clone();
    headless[start..start + 4096].fill(0);
    cases.push((last[4096..].to_vec(), headless));
    let mut truncated = whole[..start].to_vec();
    truncated.extend_from_slice(&last[..100]);
    cases.push((last[..100].to_vec(), truncated));
    for (i, (kept_bytes, torn)) in cases.into_iter().enumerate() {
        std::fs::write(log_of(d.path()), &torn).unwrap();
        let fresh = FileStore::open(d.path()).unwrap();
        // Readers ignore the torn record: the update was never acknowledged.
        assert_eq!(fresh.get("/k").unwrap().unwrap().value, b"1", "case {i}");
        assert_eq!(fresh.revision().unwrap(), r1);
        // The next commit cuts it off and keeps the bytes.
        let r = fresh.update("/k", b"3", r1).unwrap();
        let again = FileStore::open(d.path()).unwrap();
        assert_eq!(again.get("/k").unwrap().unwrap().revision, r, "case {i}");
        assert_eq!(again.get("/k").unwrap().unwrap().value, b"3", "case {i}");
        let kept = torn_files(d.path());
        assert_eq!(kept.len(), 1, "case {i}: {kept:?}");
        let mut k = std::fs::read(&kept[0]).unwrap();
        // Kept from the end of the last whole record to the last non-zero byte.
        let lead = k.iter().position(|&b| b != 0).unwrap_or(k.len());
        k.drain(..lead);
        assert_eq!(k, kept_bytes, "case {i}");
        std::fs::remove_file(&kept[0]).unwrap();
    }
}

/// Damage with valid records after it is not a torn append: every read and
/// commit fails, and nothing is written.
#[test]
fn damage_before_valid_records_is_corrupt_and_never_overwritten() {
    let (d, s) = store();
    let r = s.create("/a", b"1").unwrap();
    s.create("/b", b"2").unwrap();
    s.update("/a", b"3", r).unwrap();
    let mut bytes = std::fs::read(log_of(d.path())).unwrap();
    // Flip a byte in the payload of the middle commit.
    let (start, end) = records(&bytes)[2];
    bytes[(start + end) / 2] ^= 0x55;
    std::fs::write(log_of(d.path()), &bytes).unwrap();
    let fresh = FileStore::open(d.path()).unwrap();
    for err in
        [fresh.get("/a").unwrap_err(), fresh.create("/c", b"1").unwrap_err(), fresh.revision().unwrap_err()]
    {
        assert_corrupt(err, "byte");
    }
    drop(s);
    assert_eq!(std::fs::read(log_of(d.path())).unwrap(), bytes);
    assert!(fresh.ready().is_err());
}

/// A truncated or emptied log (the snapshot record cut) is corruption, never
/// an empty store.
#[test]
fn a_truncated_snapshot_is_corrupt_not_empty() {
    let (d, s) = store();
    s.create("/k", b"1").unwrap();
    let bytes = std::fs::read(log_of(d.path())).unwrap();
    for cut in [0, 5, 20] {
        std::fs::write(log_of(d.path()), &bytes[..cut]).unwrap();
        let fresh = FileStore::open(d.path()).unwrap();
        assert_corrupt(fresh.get("/k").unwrap_err(), "byte 0");
        assert_corrupt(fresh.create("/x", b"1").unwrap_err(), "byte 0");
        assert_eq!(std::fs::read(log_of(d.path())).unwrap(), &bytes[..cut]);
    }
}

/// A `store.json` of the previous layout becomes the log on first open,
/// keeping every key's value and revision and the store revision.
#[test]
fn the_previous_layout_is_migrated_on_first_open() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("store.json"),
        br#"{"revision":9,"keys":{"/a":{"rev":4,"json":{"x":[1,2]}},"/b":{"rev":9,"text":"plain"},"/c":{"rev":2,"bytes":[255,0]}}}"#,
    )
    .unwrap();
    let s = FileStore::open(d.path()).unwrap();
    assert_eq!(s.revision().unwrap(), 9);
    let got: Vec<_> = s.list("/").unwrap().into_iter().map(|kv| (kv.key, kv.value, kv.revision)).collect();
    assert_eq!(
        got,
        [
            ("/a".to_string(), br#"{"x":[1,2]}"#.to_vec(), 4),
            ("/b".to_string(), b"plain".to_vec(), 9),
            ("/c".to_string(), vec![255, 0], 2)
        ]
    );
    assert!(!d.path().join("store.json").exists());
    assert!(d.path().join("store.json.migrated").exists());
    assert_eq!(s.create("/d", b"1").unwrap(), 10);
    // Opening again does not migrate again.
    assert_eq!(FileStore::open(d.path()).unwrap().revision().unwrap(), 10);
}

#[test]
fn a_corrupt_previous_layout_is_reported_and_kept() {
    let d = tempfile::tempdir().unwrap();
    let old = d.path().join("store.json");
    std::fs::write(&old, b"{\"revision\":3,\"keys\":{\"/k\":").unwrap();
    assert!(
        matches!(FileStore::open(d.path()), Err(StoreError::Corrupt { key, .. }) if key.ends_with("store.json"))
    );
    assert_eq!(std::fs::read(&old).unwrap(), b"{\"revision\":3,\"keys\":{\"/k\":");
    assert!(!log_of(d.path()).exists());
    std::fs::write(&old, br#"{"revision":1,"keys":{"/bad":{"rev":1}}}"#).unwrap();
    assert!(matches!(FileStore::open(d.path()), Err(StoreError::Corrupt { key, .. }) if key == "/bad"));
}

/// The log is compacted as it grows; a handle that read the old log follows
/// the rename, and revisions keep counting.
#[test]
fn the_log_is_compacted_and_readers_follow() {
    let (d, s) = store();
    let other = FileStore::open(d.path()).unwrap();
    let value = vec![b'x'; 8 * 1024];
    let mut rev = s.create("/big", &value).unwrap();
    let mut inodes = std::collections::HashSet::new();
    for i in 0..200 {
        use std::os::unix::fs::MetadataExt;
        rev = s.update("/big", &value, rev).unwrap();
        s.create(&format!("/n/{i}"), b"1").unwrap();
        assert_eq!(other.revision().unwrap(), s.revision().unwrap());
        assert_eq!(other.get("/big").unwrap().unwrap().revision, rev);
        inodes.insert(std::fs::metadata(log_of(d.path())).unwrap().ino());
    }
    let size = std::fs::metadata(log_of(d.path())).unwrap().len();
    assert!(inodes.len() > 1, "never compacted");
    // Twice the live data, the slack before compaction, the zeros after.
    assert!(size < 2 * 9 * 1024 + 2 * 256 * 1024 + 16 * 1024, "log of {size} bytes");
    assert_eq!(other.list("/n/").unwrap().len(), 200);
    assert_eq!(FileStore::open(d.path()).unwrap().revision().unwrap(), s.revision().unwrap());
}

#[test]
fn unreadable_directory_is_an_io_error() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(FileStore::open(file.join("db")), Err(StoreError::Io { .. })));
}

/// Increment the counter at `key` `n` times with get + CAS update, retrying
/// on conflict. A lost update would show up as a final count below the total.
fn hammer(s: &dyn Datastore, key: &str, n: usize) {
    for _ in 0..n {
        loop {
            let kv = s.get(key).unwrap();
            let res = match &kv {
                None => s.create(key, b"1"),
                Some(kv) => {
                    let v: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
                    s.update(key, (v + 1).to_string().as_bytes(), kv.revision)
                }
            };
            match res {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

fn counter(s: &dyn Datastore, key: &str) -> u64 {
    String::from_utf8_lossy(&s.get(key).unwrap().unwrap().value).parse().unwrap()
}

#[test]
fn threads_hammering_one_key_lose_no_update() {
    let (_d, s) = store();
    let s = Arc::new(s);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || hammer(s.as_ref(), "/counter", 25))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counter(s.as_ref(), "/counter"), 200);
}

/// Child-process body for the multi-process test (does nothing unless the
/// parent started this binary with `FILE_STORE_HAMMER_DIR`).
#[test]
fn hammer_child() {
    let Ok(dir) = std::env::var("FILE_STORE_HAMMER_DIR") else { return };
    let s = FileStore::open(Path::new(&dir)).unwrap();
    hammer(&s, "/counter", 30);
    // Also create one key of our own, alongside the counter, in one commit.
    let me = std::process::id();
    loop {
        let kv = s.get("/counter").unwrap().unwrap();
        let v: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
        let ops = [
            Op::Update {
                key: "/counter".into(),
                value: (v + 1).to_string().into_bytes(),
                revision: kv.revision,
            },
            Op::Create { key: format!("/procs/{me}"), value: b"1".to_vec() },
        ];
        match s.commit(&ops) {
            Ok(_) => break,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn processes_hammering_one_key_lose_no_update() {
    let (d, s) = store();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "hammer_child", "--test-threads=1"])
                .env("FILE_STORE_HAMMER_DIR", d.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(counter(&s, "/counter"), 6 * 31);
    assert_eq!(s.list("/procs/").unwrap().len(), 6);
}

/// Child-process body of the SIGKILL test (does nothing unless started with
/// `FILE_STORE_CRASH_DIR`): commit forever, each commit incrementing the
/// counter and creating one key, and print the key once the commit returned.
#[test]
fn crash_child() {
    use std::io::Write;
    let Ok(dir) = std::env::var("FILE_STORE_CRASH_DIR") else { return };
    let s = FileStore::open(Path::new(&dir)).unwrap();
    let me = std::process::id();
    // Big enough values that the log is compacted every few dozen commits,
    // so kills land inside compactions too.
    let pad = vec![b'p'; 2048];
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let key = format!("/acks/{me}-{i}");
        loop {
            let kv = s.get("/counter").unwrap();
            let (n, op) = match kv {
                None => (1, Op::Create { key: "/counter".into(), value: b"1".to_vec() }),
                Some(kv) => {
                    let n = String::from_utf8_lossy(&kv.value).parse::<u64>().unwrap() + 1;
                    (
                        n,
                        Op::Update {
                            key: "/counter".into(),
                            value: n.to_string().into_bytes(),
                            revision: kv.revision,
                        },
                    )
                }
            };
            let _ = n;
            match s.commit(&[op, Op::Create { key: key.clone(), value: pad.clone() }]) {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        writeln!(out, "{key}").unwrap();
        out.flush().unwrap();
    }
}

/// Hundreds of committing processes killed (SIGKILL) at random points, four
/// at a time: every commit a process saw return is in the store, the store
/// opens without damage, and every commit was applied whole (the counter
/// equals the number of keys created beside it).
#[test]
fn processes_killed_mid_commit_lose_no_acknowledged_commit() {
    use std::io::Read;
    let (d, _s) = store();
    let exe = std::env::current_exe().unwrap();
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("seed {seed}");
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut acked = Vec::new();
    let mut kills = 0;
    while kills < 200 {
        let mut children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(&exe)
                    .args(["--exact", "crash_child", "--test-threads=1", "--nocapture"])
                    .env("FILE_STORE_CRASH_DIR", d.path())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in &mut children {
            std::thread::sleep(Duration::from_micros(500 + rand(15_000)));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            kills += 1;
        }
        for mut c in children {
            let status = c.wait().unwrap();
            assert!(status.code().is_none(), "a child ended by itself: {status:?}");
            let mut out = String::new();
            c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            acked.extend(out.lines().filter(|l| l.starts_with("/acks/")).map(str::to_string));
        }
    }
    let s = FileStore::open(d.path()).unwrap();
    let keys: std::collections::HashSet<String> =
        s.list("/acks/").unwrap().into_iter().map(|kv| kv.key).collect();
    for a in &acked {
        assert!(keys.contains(a), "acknowledged commit {a} is lost");
    }
    let files: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    eprintln!(
        "{kills} kills, {} acknowledged commits, {} in the store; files {files:?}",
        acked.len(),
        keys.len()
    );
    assert!(acked.len() > 100, "too few commits to mean anything: {}", acked.len());
    let counter =
        s.get("/counter").unwrap().map(|kv| String::from_utf8_lossy(&kv.value).parse::<usize>().unwrap());
    assert_eq!(counter.unwrap_or(0), keys.len(), "a commit was applied in part");
    // And the store still takes commits.
    s.create("/after", b"1").unwrap();
}

/// A handle that already read the log catches up with records larger than
/// one read and larger than the zeros kept after the last record.
#[test]
fn a_reader_catches_up_with_records_of_any_size() {
    let (d, s) = store();
    let other = FileStore::open(d.path()).unwrap();
    assert_eq!(other.revision().unwrap(), 0);
    for (i, size) in [10, 70 * 1024, 300 * 1024, 5, 1024 * 1024].into_iter().enumerate() {
        let value: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
        let key = format!("/v/{i}");
        let rev = s.create(&key, &value).unwrap();
        let got = other.get(&key).unwrap().unwrap();
        assert_eq!((got.value.len(), got.revision), (size, rev), "size {size}");
        assert_eq!(got.value, value);
    }
    assert_eq!(FileStore::open(d.path()).unwrap().list("/v/").unwrap().len(), 5);
}

/// `commit_then` tells the caller once the commit is visible (another handle
/// reads it inside the callback) and not for a commit that failed.
#[test]
fn commit_then_reports_a_visible_commit_once() {
    let (d, s) = store();
    let other = FileStore::open(d.path()).unwrap();
    let mut seen = Vec::new();
    let rev = s
        .commit_then(&[Op::Create { key: "/k".into(), value: b"1".to_vec() }], &mut |r| {
            seen.push((r, other.get("/k").unwrap().map(|kv| kv.revision)));
        })
        .unwrap();
    assert_eq!(seen, [(rev, Some(rev))]);
    let failed = s.commit_then(&[Op::Create { key: "/k".into(), value: b"2".to_vec() }], &mut |r| {
        panic!("told about a failed commit at {r}")
    });
    assert!(matches!(failed, Err(StoreError::Conflict { .. })));
}
