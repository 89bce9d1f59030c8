//! podman 4.3 (CNI backend) running containers on our `calico` +
//! `calico-ipam`, as a user of the plugins would: a conflist in a private
//! network config dir, a private containers.conf (`CONTAINERS_CONF`),
//! private `--root`/`--runroot`/`--tmpdir`, a busybox-static rootfs, and
//! podman itself started inside a "node" netns with `nsenter --net` (which,
//! unlike `ip netns exec`, keeps the host's /sys and cgroup mounts that
//! runc/conmon need). Nothing of the machine's own podman state is used;
//! podman writes its libcni result cache to /var/lib/cni/results (one file
//! per container, removed with the container).
//! Needs root and `cargo build --workspace --bins`.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use support::text;
use testbed::Netns;

const POOL: &str = "10.91.0.0/16";

struct Podman {
    node: Netns,
    dir: tempfile::TempDir,
    net: String,
}

impl Podman {
    fn new() -> Podman {
        let bin_dir = testbed::target_bin("calico").parent().map(Path::to_path_buf).unwrap();
        assert!(bin_dir.join("calico-ipam").exists(), "calico-ipam not built");
        support::created_dirs();
        let node = Netns::new("cpm");
        node.add_uplink();
        let dir = tempfile::Builder::new().prefix("cni-podman-").tempdir().unwrap();
        let d = dir.path();
        let rootfs = d.join("rootfs");
        for sub in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "ip", "ping", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::create_dir_all(d.join("net.d")).unwrap();
        let net = testbed::unique("calnet");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": net,
            "plugins": [support::calico_plugin(node.name(), d, POOL)]
        });
        std::fs::write(d.join("net.d/10-calico.conflist"), conflist.to_string()).unwrap();
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            bin_dir.display(),
            d.join("net.d").display()
        );
        std::fs::write(d.join("containers.conf"), conf).unwrap();
        Podman { node, dir, net }
    }

    fn podman(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        let mut c = Command::new("timeout");
        c.arg("120")
            .arg("nsenter")
            .arg(format!("--net={}", self.node.path().display()))
            .arg("--")
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"));
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.podman(args);
        assert!(o.status.success(), "podman {args:?}: {}\ncalico log:\n{}", text(&o), self.log_tail());
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn log_tail(&self) -> String {
        support::log_tail(&self.dir.path().join("calico.log"), 15)
    }

    /// `podman run -d` of a busybox `sleep` on our network; returns the ID.
    fn run(&self, name: &str) -> String {
        let rootfs = self.dir.path().join("rootfs");
        let rootfs = rootfs.to_str().unwrap();
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.net,
            "--cap-add",
            "NET_RAW",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--rootfs",
            rootfs,
            "/bin/sleep",
            "600",
        ])
    }

    fn ip_of(&self, name: &str) -> IpAddr {
        let fmt = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", self.net);
        let s = self.ok(&["inspect", name, "--format", &fmt]);
        s.parse().unwrap_or_else(|e| panic!("podman inspect IP of {name}: {s:?}: {e}"))
    }

    /// Allocated IPs and their handles, from the datastore.
    fn allocations(&self) -> Vec<(IpAddr, Option<String>)> {
        support::allocations(self.dir.path())
    }

    fn handle_exists(&self, id: &str) -> bool {
        support::handle_exists(self.dir.path(), &format!("{}.{id}", self.net))
    }

    fn node_links(&self) -> String {
        self.node.exec(&["ip", "-br", "link"])
    }

    /// Remove a container, retrying: after conmon was SIGKILLed, podman's first
    /// `rm` times out waiting for the exit file conmon never writes and marks
    /// the container exited; the next one tears the network down (CNI DEL).
    fn remove(&self, name: &str) -> String {
        let mut all = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let o = self.podman(&["rm", "-f", "-t", "0", name]);
            all.push_str(&text(&o));
            let ps = self.ok(&["ps", "-a", "--format", "{{.Names}}"]);
            if !ps.lines().any(|l| l == name) {
                return all;
            }
        }
        panic!("{name} not removed: {all}");
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for _ in 0..2 {
            let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        }
        support::remove_created_dirs();
    }
}

fn veth_of(id: &str) -> String {
    // Non-Kubernetes workloads (podman sends no K8S_POD_NAMESPACE): cali + containerID[:11].
    format!("cali{}", &id[..11])
}

#[test]
fn podman_containers_get_calico_ips_reach_each_other_and_release_on_rm() {
    let pm = Podman::new();
    let (a, b) = (testbed::unique("pa"), testbed::unique("pb"));
    let id_a = pm.run(&a);
    let id_b = pm.run(&b);
    let (ip_a, ip_b) = (pm.ip_of(&a), pm.ip_of(&b));
    let pool: IpNetwork = POOL.parse().unwrap();
    assert!(pool.contains(ip_a) && pool.contains(ip_b) && ip_a != ip_b, "{ip_a} {ip_b}");
    // podman's view = our IPAM's: the address is held by handle <net>.<containerID>.
    let allocs = pm.allocations();
    for (ip, id) in [(ip_a, &id_a), (ip_b, &id_b)] {
        let want = format!("{}.{id}", pm.net);
        assert!(allocs.contains(&(ip, Some(want.clone()))), "{ip} not held by {want}: {allocs:?}");
        assert!(pm.handle_exists(id));
    }
    // In the container: eth0 has the /32, default route via 169.254.1.1.
    let addr = pm.ok(&["exec", &a, "ip", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("{ip_a}/32")), "{addr}");
    let routes = pm.ok(&["exec", &a, "ip", "route"]);
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "{routes}");
    assert!(routes.contains("169.254.1.1 dev eth0 scope link"), "{routes}");
    // The two containers reach each other through the node.
    pm.ok(&["exec", &a, "ping", "-c", "2", "-W", "2", &ip_b.to_string()]);
    pm.ok(&["exec", &b, "ping", "-c", "2", "-W", "2", &ip_a.to_string()]);
    assert!(pm.node_links().contains(&veth_of(&id_a)));
    // Removing a container releases its IP and its veth (podman's CNI DEL).
    pm.ok(&["rm", "-f", "-t", "0", &a]);
    let allocs = pm.allocations();
    assert!(!allocs.iter().any(|(ip, _)| *ip == ip_a), "{ip_a} still allocated: {allocs:?}");
    assert!(!pm.handle_exists(&id_a), "handle of {a} left");
    assert!(!pm.node_links().contains(&veth_of(&id_a)), "veth of {a} left: {}", pm.node_links());
    assert!(allocs.iter().any(|(ip, _)| *ip == ip_b), "{b}'s IP was released too");
}

#[test]
fn podman_del_after_a_crash_does_not_fail() {
    let pm = Podman::new();
    // 1. The container process dies (SIGKILL); conmon survives and runs
    //    podman's cleanup, which tears the network down.
    let c = testbed::unique("pc");
    let id_c = pm.run(&c);
    let ip_c = pm.ip_of(&c);
    let pid = pm.ok(&["inspect", &c, "--format", "{{.State.Pid}}"]);
    assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let out = pm.remove(&c);
    assert!(!out.contains("failed (delete)"), "CNI DEL failed: {out}");
    assert!(!pm.allocations().iter().any(|(ip, _)| *ip == ip_c), "{ip_c} not released");
    assert!(!pm.node_links().contains(&veth_of(&id_c)));

    // 2. Both the container process and conmon die (SIGKILL): nothing cleans
    //    up until `podman rm`, whose DEL must still succeed.
    let d = testbed::unique("pd");
    let id_d = pm.run(&d);
    let ip_d = pm.ip_of(&d);
    let pids = pm.ok(&["inspect", &d, "--format", "{{.State.Pid}} {{.State.ConmonPid}}"]);
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let out = pm.remove(&d);
    assert!(!out.contains("failed (delete)"), "CNI DEL failed: {out}");
    assert!(!out.contains("calico"), "plugin error surfaced: {out}");
    assert!(!pm.allocations().iter().any(|(ip, _)| *ip == ip_d), "{ip_d} not released: {out}");
    assert!(!pm.handle_exists(&id_d));
    assert!(!pm.node_links().contains(&veth_of(&id_d)), "veth left: {}", pm.node_links());
}
