//! The runtime driver against script plugins (no namespaces needed): chain
//! order, prevResult threading, DEL in reverse with the cached result,
//! CHECK/GC/STATUS version floors, error decoding, timeouts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use conformance::{Attachment, Error, NetworkConfigList, Runtime, RuntimeConf};
use serde_json::{json, Value};

/// A plugin that logs `<name> <command> <stdin>` to `log` and, on ADD,
/// prints prevResult with one more IP appended (or a fresh result).
fn plugin(dir: &Path, name: &str, log: &Path) {
    let script = format!(
        r#"#!/bin/sh
in=$(cat)
printf '%s %s %s\n' {name} "$CNI_COMMAND" "$in" >> {log}
case "$CNI_COMMAND" in
ADD) printf '%s' "$in" | python3 -c '
import json,sys
c=json.load(sys.stdin)
r=c.get("prevResult") or {{"cniVersion":c["cniVersion"],"ips":[]}}
r["ips"].append({{"address":"10.0.0.%d/24" % (len(r["ips"])+1)}})
print(json.dumps(r))' ;;
FAILADD) exit 1 ;;
esac
exit 0
"#,
        log = log.display()
    );
    let p = dir.join(name);
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn calls(log: &Path) -> Vec<(String, String, Value)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let (n, c, s) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            (n.to_string(), c.to_string(), serde_json::from_str(s).unwrap())
        })
        .collect()
}

fn setup(version: &str) -> (tempfile::TempDir, Runtime, NetworkConfigList, RuntimeConf) {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log");
    for n in ["first", "second"] {
        plugin(d.path(), n, &log);
    }
    let rt = Runtime::new(vec![d.path().to_path_buf()]).with_cache_dir(d.path().join("cache"));
    let list = NetworkConfigList::from_value(&json!({
        "cniVersion": version, "name": "net",
        "plugins": [{"type": "first", "capabilities": {"ips": true}}, {"type": "second", "keep": {"x": 1}}]
    }))
    .unwrap();
    let mut rc = RuntimeConf::new("ctr1", "/run/netns/none", "eth0");
    rc.capability_args.insert("ips".into(), json!(["10.0.0.9/24"]));
    rc.capability_args.insert("mac".into(), json!("aa:bb:cc:dd:ee:ff"));
    (d, rt, list, rc)
}

#[test]
fn add_threads_prev_result_and_del_runs_reverse_with_cache() {
    let (d, rt, list, rc) = setup("1.0.0");
    let log = d.path().join("log");
    let res = rt.add_network_list(&list, &rc).unwrap();
    assert_eq!(res["ips"].as_array().unwrap().len(), 2);
    let c = calls(&log);
    assert_eq!((c[0].0.as_str(), c[0].1.as_str()), ("first", "ADD"));
    assert!(c[0].2.get("prevResult").is_none());
    assert_eq!(c[0].2["runtimeConfig"], json!({"ips": ["10.0.0.9/24"]}), "only declared capabilities");
    assert_eq!(c[1].2["prevResult"]["ips"].as_array().unwrap().len(), 1);
    assert_eq!(c[1].2["keep"], json!({"x": 1}));
    assert!(c[1].2.get("runtimeConfig").is_none());
    // The cache replays the final result on CHECK and DEL.
    rt.check_network_list(&list, &rc).unwrap();
    rt.del_network_list(&list, &rc).unwrap();
    let c = calls(&log);
    let order: Vec<String> = c.iter().map(|(n, cmd, _)| format!("{n}:{cmd}")).collect();
    assert_eq!(order, ["first:ADD", "second:ADD", "first:CHECK", "second:CHECK", "second:DEL", "first:DEL"]);
    for (_, _, stdin) in &c[2..] {
        assert_eq!(stdin["prevResult"], res);
    }
    assert!(rt.cache.read("net", "ctr1", "eth0").unwrap().is_none());
    // DEL without a cache entry: no prevResult, still succeeds.
    rt.del_network_list(&list, &rc).unwrap();
    assert!(calls(&log).last().unwrap().2.get("prevResult").is_none());
}

#[test]
fn cached_result_is_converted_to_the_list_version() {
    let (_d, rt, list, rc) = setup("0.4.0");
    rt.add_network_list(&list, &rc).unwrap();
    let cached = rt.cached_result(&list, &rc).unwrap().unwrap();
    assert_eq!(cached["ips"][0]["version"], "4");
}

#[test]
fn check_floor_and_gc_status_versions() {
    let (d, rt, list, rc) = setup("0.3.1");
    assert!(matches!(rt.check_network_list(&list, &rc), Err(Error::CheckNotSupported(_))));
    // STATUS on a pre-1.1.0 list is not sent.
    rt.status_network_list(&list).unwrap();
    assert!(calls(&d.path().join("log")).is_empty());

    let (d, rt, list, rc) = setup("1.1.0");
    rt.add_network_list(&list, &rc).unwrap();
    let mut other = rc.clone();
    other.container_id = "ctr2".into();
    rt.add_network_list(&list, &other).unwrap();
    let valid = [Attachment { container_id: "ctr1".into(), ifname: "eth0".into() }];
    rt.gc_network_list(&list, Some(&valid)).unwrap();
    let c = calls(&d.path().join("log"));
    let tail: Vec<String> = c[4..].iter().map(|(n, cmd, _)| format!("{n}:{cmd}")).collect();
    // Stale ctr2 DELeted (reverse), then GC to every plugin with both spellings.
    assert_eq!(tail, ["second:DEL", "first:DEL", "first:GC", "second:GC"]);
    let gc = &c[6].2;
    assert_eq!(gc["cni.dev/valid-attachments"], json!([{"containerID": "ctr1", "ifname": "eth0"}]));
    assert_eq!(gc["cni.dev/attachments"], gc["cni.dev/valid-attachments"]);
    assert_eq!(c[4].2["prevResult"]["ips"].as_array().unwrap().len(), 2, "stale DEL replays its cache");
    let left: Vec<String> = rt.cache.attachments(None).into_iter().map(|a| a.info.container_id).collect();
    assert_eq!(left, ["ctr1"]);
    rt.status_network_list(&list).unwrap();
    assert_eq!(calls(&d.path().join("log")).last().unwrap().1, "STATUS");
}

#[test]
fn plugin_errors_are_decoded_and_nothing_is_cached() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad");
    std::fs::write(&p, "#!/bin/sh\necho '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"nope\",\"details\":\"why\"}'\nexit 1\n")
        .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let q = d.path().join("slow");
    std::fs::write(&q, "#!/bin/sh\nsleep 20\n").unwrap();
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rt = Runtime::new(vec![d.path().to_path_buf()])
        .with_cache_dir(d.path().join("cache"))
        .with_timeout(Duration::from_millis(300));
    let rc = RuntimeConf::new("c", "/x", "eth0");
    let bad = NetworkConfigList::from_value(
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bad"}]}),
    )
    .unwrap();
    let e = rt.add_network_list(&bad, &rc).unwrap_err();
    assert_eq!(e.code(), Some(7));
    assert_eq!(e.plugin_error().unwrap().details, "why");
    assert!(rt.cache.attachments(None).is_empty());
    let slow = NetworkConfigList::from_value(
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "slow"}]}),
    )
    .unwrap();
    assert!(matches!(rt.add_network_list(&slow, &rc), Err(Error::Timeout { .. })));
    let missing = NetworkConfigList::from_value(
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "nope"}]}),
    )
    .unwrap();
    assert!(matches!(rt.add_network_list(&missing, &rc), Err(Error::PluginNotFound { .. })));
    let mut bad_id = rc.clone();
    bad_id.container_id = "-bad".into();
    assert!(matches!(rt.add_network_list(&bad, &bad_id), Err(Error::InvalidArgs(_))));
}
