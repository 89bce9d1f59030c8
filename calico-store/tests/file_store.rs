//! The file store against the `Datastore` contract: CAS, atomic commits,
//! concurrent threads and processes, corrupt data.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

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

#[test]
fn corrupt_document_is_reported_and_never_overwritten() {
    let (d, s) = store();
    s.create("/k", b"1").unwrap();
    let data = d.path().join("store.json");
    std::fs::write(&data, b"{\"revision\":3,\"keys\":{\"/k\":").unwrap();
    for err in [s.get("/k").unwrap_err(), s.create("/other", b"1").unwrap_err(), s.revision().unwrap_err()] {
        match err {
            StoreError::Corrupt { key, .. } => assert!(key.ends_with("store.json"), "{key}"),
            other => panic!("expected Corrupt, got {other}"),
        }
    }
    // The commit attempt left the damaged file as it was.
    assert_eq!(std::fs::read(&data).unwrap(), b"{\"revision\":3,\"keys\":{\"/k\":");
    assert!(s.ready().is_err());
}

#[test]
fn entry_without_a_value_is_corrupt_naming_the_key() {
    let (d, s) = store();
    std::fs::write(d.path().join("store.json"), br#"{"revision":1,"keys":{"/bad":{"rev":1}}}"#).unwrap();
    assert!(matches!(s.get("/bad"), Err(StoreError::Corrupt { key, .. }) if key == "/bad"));
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
