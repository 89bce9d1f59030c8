//! Real BGP sessions between the agent's BIRD (in a "node" netns) and a
//! peer BIRD (in a "tor" netns), driven by BGPPeer documents in a file
//! store: a TCP-MD5 password from the agent's `bgp_secrets` (right: the
//! session comes up; wrong: it stays down; never in the agent's log) and an
//! IPv6 session that carries the node's IPv6 block, blackholed locally.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use calico_store::file::FileStore;
use calico_store::model::{
    self, AffinityState, BgpPassword, BgpPeer, BgpPeerSpec, BlockAffinity, ObjectMeta,
};
use calico_store::Datastore;
use ipnetwork::IpNetwork;
use testbed::{wait_for, Daemon, Netns};

mod support;

fn put(store: &FileStore, key: &str, value: Vec<u8>) {
    match store.get(key).unwrap() {
        Some(kv) => store.update(key, &value, kv.revision).unwrap(),
        None => store.create(key, &value).unwrap(),
    };
}

fn claim(store: &FileStore, node: &str, cidr: &str) {
    let net: IpNetwork = cidr.parse().unwrap();
    let aff = BlockAffinity { state: AffinityState::Confirmed, deleted: false };
    put(store, &model::affinity_key(node, &net), model::encode(&aff));
}

fn bgp_peer(store: &FileStore, name: &str, ip: &str, password_key: Option<&str>) {
    let spec = BgpPeerSpec {
        peer_ip: Some(ip.into()),
        as_number: Some(65000),
        password: password_key.map(|k| BgpPassword {
            secret_key_ref: Some(model::SecretKeyRef { name: "tor-secret".into(), key: k.into() }),
        }),
        ..Default::default()
    };
    let doc = BgpPeer::new("BGPPeer", ObjectMeta { name: name.into(), ..Default::default() }, spec);
    put(store, &model::bgp_peer_key(name), model::encode(&doc));
}

fn bird(ns: &Netns, dir: &Path, name: &str) -> Daemon {
    let mut cmd = ns.nsenter("bird");
    cmd.arg("-f").arg("-c").arg(dir.join("bird.conf")).arg("-s").arg(dir.join("bird.ctl"));
    cmd.arg("-P").arg(dir.join("bird.pid"));
    let d = Daemon::spawn(name, cmd, &dir.join("bird.out")).unwrap();
    wait_for("BIRD socket", Duration::from_secs(10), || {
        birdc(dir, &["show", "status"]).contains("Daemon is up")
    });
    d
}

fn birdc(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("birdc").arg("-s").arg(dir.join("bird.ctl")).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn established(dir: &Path, proto: &str) -> bool {
    birdc(dir, &["show", "protocols", proto]).contains("Established")
}

/// A "node" and a "tor" namespace joined by a veth (`eth0` in the node,
/// `eth1` in the tor) with these IPv4 (and IPv6) addresses, all up.
fn node_and_tor(names: (&str, &str), v4: (&str, &str), v6: Option<(&str, &str)>) -> (Netns, Netns) {
    let node_ns = Netns::new(names.0);
    let tor_ns = Netns::new(names.1);
    node_ns.exec(&[
        "ip",
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        tor_ns.name(),
    ]);
    for (ns, dev, v4, v6) in
        [(&node_ns, "eth0", v4.0, v6.map(|v| v.0)), (&tor_ns, "eth1", v4.1, v6.map(|v| v.1))]
    {
        ns.exec(&["ip", "addr", "add", v4, "dev", dev]);
        if let Some(v6) = v6 {
            ns.exec(&["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"]);
        }
        ns.exec(&["ip", "link", "set", dev, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
    }
    (node_ns, tor_ns)
}

/// `run --once` with these flags in `ns`: BIRD's config written before BIRD starts.
fn run_once(ns: &Netns, extra: &[&str], store_dir: &Path, run: &Path) {
    let mut once = ns.nsenter(testbed::target_bin("calico-node-agent"));
    once.args(["run", "--once"]);
    support::agent_args(&mut once, extra, store_dir, run);
    let out = once.output().unwrap();
    assert!(out.status.success(), "run --once: {}", String::from_utf8_lossy(&out.stderr));
}

const RIGHT: &str = "Right-Pass1";
const WRONG: &str = "Wrong-Pass2";

#[test]
fn md5_passwords_and_ipv6_sessions_to_a_peer() {
    let (node_ns, tor_ns) = node_and_tor(
        ("nbs", "tbs"),
        ("192.168.78.2/24", "192.168.78.1/24"),
        Some(("fd00:78::2/64", "fd00:78::1/64")),
    );
    let dir = tempfile::tempdir().unwrap();
    let (store_dir, run, tor_run) =
        (dir.path().join("store"), dir.path().join("run"), dir.path().join("tor"));
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&tor_run).unwrap();
    let secrets = dir.path().join("bgp-secrets.json");
    std::fs::write(&secrets, format!(r#"{{"tor-secret": {{"right": "{RIGHT}", "wrong": "{WRONG}"}}}}"#))
        .unwrap();
    let store = FileStore::open(&store_dir).unwrap();
    let node = testbed::unique("n");
    claim(&store, &node, "10.253.0.0/26");
    claim(&store, &node, "fd00:253::/122");
    bgp_peer(&store, "tor-v4", "192.168.78.1", Some("right"));
    bgp_peer(&store, "tor-v6", "fd00:78::1", None);

    // The tor: the right password on its IPv4 session, an IPv6 session.
    std::fs::write(
        tor_run.join("bird.conf"),
        format!(
            "router id 192.168.78.1;\nprotocol device {{ scan time 2; }}\n\
             protocol bgp v4 {{ local 192.168.78.1 as 65000; neighbor 192.168.78.2 as 64512; \
             password \"{RIGHT}\"; connect retry time 1; error wait time 1,2; ipv4 {{ import all; export none; }}; }}\n\
             protocol bgp v6 {{ local fd00:78::1 as 65000; neighbor fd00:78::2 as 64512; \
             connect retry time 1; error wait time 1,2; ipv6 {{ import all; export none; }}; }}\n"
        ),
    )
    .unwrap();
    let _tor = bird(&tor_ns, &tor_run, "bird-tor");

    let secrets_path = secrets.to_string_lossy().into_owned();
    let flags = [
        "--node-name",
        &node,
        "--node-ip",
        "192.168.78.2/24",
        "--node-ipv6",
        "fd00:78::2/64",
        "--bgp-secrets",
        &secrets_path,
        "-v",
    ];
    run_once(&node_ns, &flags, &store_dir, &run);
    let _node_bird = bird(&node_ns, &run, "bird-node");
    let mut cmd = node_ns.nsenter(testbed::target_bin("calico-node-agent"));
    cmd.arg("run");
    support::agent_args(&mut cmd, &flags, &store_dir, &run);
    let _agent = Daemon::spawn("agent", cmd, &run.join("agent.out")).unwrap();

    // The Node carries its IPv6 address; the IPv6 block is blackholed.
    let n: model::Node = model::decode(&store.get(&model::node_key(&node)).unwrap().unwrap()).unwrap();
    assert_eq!(n.spec.bgp.unwrap().ipv6_address.as_deref(), Some("fd00:78::2/64"));
    let bh6 = node_ns.exec(&["ip", "-6", "route", "show", "type", "blackhole", "proto", "80"]);
    assert!(bh6.contains("fd00:253::/122"), "{bh6}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(run.join("bird.conf")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "bird.conf holds a password: owner-only, got {mode:o}");

    // Right password: up, and each family's block arrives on its own session.
    wait_for("IPv4 session with the right password", Duration::from_secs(20), || established(&tor_run, "v4"));
    wait_for("IPv6 session", Duration::from_secs(20), || established(&tor_run, "v6"));
    wait_for("the tor learns both blocks", Duration::from_secs(10), || {
        let r = birdc(&tor_run, &["show", "route", "all"]);
        r.contains("10.253.0.0/26") && r.contains("fd00:253::/122")
    });
    let v6 = birdc(&tor_run, &["show", "route", "protocol", "v6"]);
    assert!(v6.contains("fd00:253::/122") && !v6.contains("10.253.0.0"), "{v6}");

    // Wrong password (the BGPPeer now names the other key): the session
    // restarts with it and stays down while the IPv6 one stays up.
    bgp_peer(&store, "tor-v4", "192.168.78.1", Some("wrong"));
    wait_for("the agent to reconfigure BIRD", Duration::from_secs(10), || {
        std::fs::read_to_string(run.join("bird.conf")).unwrap_or_default().contains(WRONG)
    });
    std::thread::sleep(Duration::from_secs(1));
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        assert!(!established(&tor_run, "v4"), "a wrong password must keep the session down");
        assert!(!established(&run, "Global_192_168_78_1"));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(established(&tor_run, "v6"));

    // A password BIRD's strings cannot hold: the session is not configured
    // at all (and `bird -p` still accepts the rest).
    std::fs::write(
        &secrets,
        format!(r#"{{"tor-secret": {{"right": "{RIGHT}", "wrong": "x\"; }} protocol"}}}}"#),
    )
    .unwrap();
    bgp_peer(&store, "tor-v4", "192.168.78.1:179", Some("wrong"));
    wait_for("the bad password's session to go", Duration::from_secs(10), || {
        !birdc(&run, &["show", "protocols"]).contains("Global_192_168_78_1")
    });

    // Back to the right one: up again.
    bgp_peer(&store, "tor-v4", "192.168.78.1", Some("right"));
    wait_for("IPv4 session back with the right password", Duration::from_secs(30), || {
        established(&tor_run, "v4")
    });

    let log = std::fs::read_to_string(run.join("agent.log")).unwrap();
    assert!(log.contains("with password"), "{log}");
    assert!(log.contains("the password contains a double quote"), "the bad password is reported: {log}");
    for secret in [RIGHT, WRONG, "; } protocol"] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}

/// BGPConfiguration `listenPort`: the node's BIRD listens there (and not on
/// 179), and a peer that can only reach it there gets its session: the tor
/// listens on a port of its own, so the node's connections to its 179 are
/// refused and the session is the one the tor opens to the node's port.
#[test]
fn the_node_listens_on_its_listen_port() {
    let (node_ns, tor_ns) = node_and_tor(("nlp", "tlp"), ("192.168.77.2/24", "192.168.77.1/24"), None);
    let dir = tempfile::tempdir().unwrap();
    let (store_dir, run, tor_run) =
        (dir.path().join("store"), dir.path().join("run"), dir.path().join("tor"));
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&tor_run).unwrap();
    let store = FileStore::open(&store_dir).unwrap();
    let node = testbed::unique("n");
    claim(&store, &node, "10.252.0.0/26");
    bgp_peer(&store, "tor", "192.168.77.1", None);
    let config = model::BgpConfiguration::new(
        "BGPConfiguration",
        ObjectMeta { name: "default".into(), ..Default::default() },
        model::BgpConfigurationSpec {
            listen_port: Some(1790),
            node_to_node_mesh_enabled: Some(false),
            ..Default::default()
        },
    );
    put(&store, &model::bgp_configuration_key("default"), model::encode(&config));

    std::fs::write(
        tor_run.join("bird.conf"),
        "router id 192.168.77.1;\nprotocol device { scan time 2; }\n\
         protocol bgp n { local 192.168.77.1 port 1800 as 65000; neighbor 192.168.77.2 port 1790 as 64512; \
         connect retry time 1; error wait time 1,2; ipv4 { import all; export none; }; }\n",
    )
    .unwrap();
    let _tor = bird(&tor_ns, &tor_run, "bird-tor");

    run_once(&node_ns, &["--node-name", &node, "--node-ip", "192.168.77.2/24"], &store_dir, &run);
    let _node_bird = bird(&node_ns, &run, "bird-node");

    wait_for("BIRD to listen on 1790", Duration::from_secs(10), || {
        node_ns.exec(&["ss", "-Hltn"]).contains(":1790 ")
    });
    let listening = node_ns.exec(&["ss", "-Hltn"]);
    assert!(!listening.contains(":179 "), "and not on 179: {listening}");
    wait_for("the session the tor opens to port 1790", Duration::from_secs(20), || {
        established(&tor_run, "n")
    });
    wait_for("the tor learns the block", Duration::from_secs(10), || {
        birdc(&tor_run, &["show", "route"]).contains("10.252.0.0/26")
    });
}
