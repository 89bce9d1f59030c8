//! kubelet's path: containerd 1.6 (Debian's) runs pods on our `calico` +
//! `calico-ipam` when asked over its CRI socket, as kubelet asks it.
//!
//! kubelet never runs CNI plugins itself: it calls `RunPodSandbox`,
//! `PodSandboxStatus`, `StopPodSandbox` and `RemovePodSandbox`, and the
//! runtime's CRI plugin runs the first conflist of its `conf_dir` with the
//! plugins of its `bin_dir`. This test is that client. containerd runs inside
//! a "node" netns (entered with `nsenter --net`, which keeps the host's /sys
//! and cgroup mounts that runc needs; `ip netns exec` remounts /sys) with its
//! own config whose every path is in the test's temporary directory
//! (conformance/README.md, "containerd recipe", says why each setting is there).
//! No image can be pulled, so the sandbox image (busybox-static running
//! `sleep`) is built here as an OCI archive and imported with `ctr`.
//!
//! `cni-probe` is chained after `calico` to see what containerd sends
//! (K8S_* args, the two DELs per pod); it passes the result through unchanged.
//!
//! Everything is torn down on drop, also when an assertion failed: the pods
//! (through CRI, so their CNI DELs run), containerd's process group, its
//! shims, the pod processes (by cgroup), every mount under the temporary
//! directory, the pods' cgroups, and what lives at fixed paths outside it:
//! libcni's result cache and the shim sockets.
//! Needs root, containerd + runc + containernetworking-plugins +
//! busybox-static (`make deps`) and `cargo build --workspace --bins`.

mod support;

use std::cell::RefCell;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calico_store::model;
use conformance::suite::calico::veth_name;
use conformance::suite::CalicoImpl;
use hyper_util::rt::TokioIo;
use ipnetwork::IpNetwork;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxState, PodSandboxStatus, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StatusRequest, StopPodSandboxRequest, VersionRequest,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use testbed::Netns;
use tonic::transport::{Channel, Endpoint, Uri};

const POOL: &str = "10.92.0.0/16";
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const RUNC: &str = "/usr/sbin/runc";
/// containerd's CRI plugin adds a loopback network to every pod first.
const LOOPBACK: &str = "/usr/lib/cni/loopback";
const BUSYBOX: &str = "/bin/busybox";
/// The containerd namespace the CRI plugin keeps its images and pods in.
const CRI_NAMESPACE: &str = "k8s.io";
/// libcni (inside containerd) caches every ADD result in
/// `<this>/<network>-<containerID>-<ifname>`: a fixed path, not configurable
/// through containerd, so the test removes what its pods left there.
const CNI_RESULTS: &str = "/var/lib/cni/results";
/// The shims' sockets go here whatever containerd's config says.
const SHIM_SOCKETS: &str = "/run/containerd/s";
/// Bound for each CRI call: a hung containerd fails the test, not the run.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The OCI `GOARCH` name of this machine's architecture (the image config
/// must match it, or containerd will not unpack the image).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(data))
}

fn append(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(if path.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular });
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    tar.append_data(&mut h, path, data).unwrap();
}

/// Write an OCI image archive to `path`: one uncompressed layer holding
/// busybox-static, an entrypoint `/bin/busybox sleep 3600` (the sandbox's
/// "pause"), named `name` through the `io.containerd.image.name` annotation
/// that `ctr images import` takes as the image's full name.
fn write_sandbox_image(path: &Path, name: &str) {
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin/", "dev/", "etc/", "proc/", "sys/", "tmp/"] {
        append(&mut layer, dir, 0o755, &[]);
    }
    append(&mut layer, "bin/busybox", 0o755, &std::fs::read(BUSYBOX).unwrap());
    let layer = layer.into_inner().unwrap();
    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "3600"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))]}
    })
    .to_string()
    .into_bytes();
    let descriptor = |media_type: &str, blob: &[u8]| json!({"mediaType": media_type, "digest": format!("sha256:{}", sha256_hex(blob)), "size": blob.len()});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)]
    })
    .to_string()
    .into_bytes();
    let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    entry["annotations"] = json!({"io.containerd.image.name": name});
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry]});
    let mut archive = tar::Builder::new(Vec::new());
    append(&mut archive, "oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#);
    append(&mut archive, "index.json", 0o644, index.to_string().as_bytes());
    append(&mut archive, "blobs/", 0o755, &[]);
    append(&mut archive, "blobs/sha256/", 0o755, &[]);
    for blob in [&layer, &config, &manifest] {
        append(&mut archive, &format!("blobs/sha256/{}", sha256_hex(blob)), 0o644, blob);
    }
    std::fs::write(path, archive.into_inner().unwrap()).unwrap();
}

/// containerd's version 2 config: every path in `d`, the CRI plugin's pod
/// netns under the state dir, and the settings these machines need.
fn containerd_config(d: &Path, sandbox_image: &str) -> String {
    let p = |sub: &str| d.join(sub).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# Not on this machine, or not wanted: each would probe the host or dial out.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

# Unused (the CRI plugin runs runc v2 shims), but tasks-service needs it loaded.
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{state}/runc-v1"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # root lacks CAP_SYS_RESOURCE here: runc fails to set an oom_score_adj below ours.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
        Root = "{runc_root}"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
        root = p("root"),
        state = p("state"),
        sock = p("containerd.sock"),
        opt = p("opt"),
        runc = RUNC,
        runc_root = p("state/runc"),
        bin = p("bin"),
        conf = p("net.d"),
    )
}

/// What `PodSandboxStatus` says of a pod, with the netns path from its
/// verbose info (the runtime spec containerd gave runc).
struct Pod {
    id: String,
    name: String,
    uid: String,
    ip: IpAddr,
    netns: PathBuf,
}

/// A containerd with its CRI plugin on our plugins, in a node netns of its own.
struct Containerd {
    rt: tokio::runtime::Runtime,
    channel: Option<Channel>,
    child: Option<Child>,
    /// The pod sandboxes this test asked for (also found by `ListPodSandbox`
    /// on drop; kept here in case containerd is gone by then).
    sandboxes: RefCell<Vec<String>>,
    /// The Kubernetes namespace of every pod this fixture runs.
    k8s_ns: String,
    /// The network name (and so the prefix of the IPAM handles and libcni's cache files).
    net: String,
    /// The test's own cgroup (`/<this>` in every hierarchy), parent of the pods'.
    cgroup: String,
    version: String,
    node: Netns,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start(version: &str) -> Containerd {
        for (path, package) in [
            (CONTAINERD, "containerd"),
            (CTR, "containerd"),
            (RUNC, "runc"),
            (LOOPBACK, "containernetworking-plugins"),
            (BUSYBOX, "busybox-static"),
        ] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's {package} (`make deps` does)"
            );
        }
        support::created_dirs();
        let node = Netns::new("ctd");
        node.add_uplink();
        let dir = tempfile::Builder::new().prefix("cni-containerd-").tempdir().unwrap();
        let d = dir.path();
        let net = testbed::unique("calnet");
        // bin_dir: our plugins (debug builds in the target dir) and Debian's loopback.
        std::fs::create_dir_all(d.join("bin")).unwrap();
        for plugin in ["calico", "calico-ipam", "cni-probe"] {
            std::os::unix::fs::symlink(testbed::target_bin(plugin), d.join("bin").join(plugin)).unwrap();
        }
        std::os::unix::fs::symlink(LOOPBACK, d.join("bin/loopback")).unwrap();
        std::fs::create_dir_all(d.join("net.d")).unwrap();
        std::fs::create_dir_all(d.join("probe")).unwrap();
        let conflist = json!({
            "cniVersion": version,
            "name": net,
            "plugins": [
                support::calico_plugin(node.name(), d, POOL),
                {"type": "cni-probe", "probeDir": d.join("probe")}
            ]
        });
        std::fs::write(d.join("net.d/10-calico.conflist"), conflist.to_string()).unwrap();
        let image = format!("localhost/calico-rs-sandbox:{}", testbed::unique("t"));
        write_sandbox_image(&d.join("sandbox.tar"), &image);
        std::fs::write(d.join("config.toml"), containerd_config(d, &image)).unwrap();

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut c = Containerd {
            rt,
            channel: None,
            child: None,
            sandboxes: RefCell::new(Vec::new()),
            k8s_ns: testbed::unique("ns"),
            net,
            cgroup: testbed::unique("cri-test-"),
            version: version.to_string(),
            node,
            dir,
        };
        let log = std::fs::File::create(c.path("containerd.log")).unwrap();
        let child = c
            .node
            .nsenter(CONTAINERD)
            .arg("--config")
            .arg(c.path("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, killed as one on drop.
            .process_group(0)
            .spawn()
            .unwrap();
        c.child = Some(child);
        c.wait_ready();
        c.import_image(&image);
        c
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn socket(&self) -> PathBuf {
        self.path("containerd.sock")
    }

    fn logs(&self) -> String {
        format!(
            "containerd log:\n{}\ncalico log:\n{}",
            support::log_tail(&self.path("containerd.log"), 20),
            support::log_tail(&self.path("calico.log"), 20)
        )
    }

    /// Connect to the CRI socket once containerd serves it, and wait for its
    /// CNI config to be loaded (the `NetworkReady` condition kubelet waits for).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let sock = self.socket();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("containerd exited ({status})\n{}", self.logs());
            }
            assert!(Instant::now() < deadline, "containerd's CRI socket not ready in 30 s\n{}", self.logs());
            if sock.exists() {
                let sock = sock.clone();
                let connected = self.rt.block_on(async move {
                    // The URI is required but unused: the connector dials the socket.
                    let channel = Endpoint::from_static("http://[::]:0")
                        .connect_with_connector(tower::service_fn(move |_: Uri| {
                            let sock = sock.clone();
                            async move {
                                Ok::<_, std::io::Error>(TokioIo::new(
                                    tokio::net::UnixStream::connect(sock).await?,
                                ))
                            }
                        }))
                        .await
                        .ok()?;
                    let v = RuntimeServiceClient::new(channel.clone())
                        .version(VersionRequest::default())
                        .await
                        .ok()?;
                    Some((channel, v.into_inner()))
                });
                if let Some((channel, v)) = connected {
                    assert_eq!(v.runtime_name, "containerd", "{v:?}");
                    self.channel = Some(channel);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let status = self.call(|mut c| async move { c.status(StatusRequest { verbose: false }).await });
            let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
            if conditions.iter().any(|c| c.r#type == "NetworkReady" && c.status) {
                return;
            }
            assert!(Instant::now() < deadline, "network not ready in 30 s: {conditions:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone().expect("not connected"))
    }

    /// One CRI runtime call, bounded by [`CALL_TIMEOUT`].
    fn try_call<T, F>(&self, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.runtime();
        // The timer is created inside the runtime: it needs its time driver.
        match self.rt.block_on(async move { tokio::time::timeout(CALL_TIMEOUT, f(client)).await }) {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer in {CALL_TIMEOUT:?}")),
        }
    }

    fn call<T, F>(&self, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.try_call(f).unwrap_or_else(|e| panic!("CRI call failed: {e}\n{}", self.logs()))
    }

    /// `ctr images import` of the sandbox image into the CRI namespace, then
    /// wait until the CRI plugin (which learns of images from containerd's
    /// events) reports it: otherwise `RunPodSandbox` would try to pull it.
    fn import_image(&self, image: &str) {
        let out = Command::new(CTR)
            .arg("-a")
            .arg(self.socket())
            .args(["-n", CRI_NAMESPACE, "images", "import"])
            .arg(self.path("sandbox.tar"))
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr images import: {}\n{}", support::text(&out), self.logs());
        let deadline = Instant::now() + Duration::from_secs(10);
        let channel = self.channel.clone().expect("not connected");
        loop {
            let mut images = ImageServiceClient::new(channel.clone());
            let req = ImageStatusRequest {
                image: Some(ImageSpec { image: image.to_string(), ..Default::default() }),
                verbose: false,
            };
            let found = self
                .rt
                .block_on(async { tokio::time::timeout(CALL_TIMEOUT, images.image_status(req)).await })
                .map_err(|_| format!("no answer in {CALL_TIMEOUT:?}"))
                .and_then(|r| r.map_err(|s| s.to_string()))
                .map(|r| r.into_inner().image.is_some());
            if let Ok(true) = found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CRI does not see {image} after import: {found:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `RunPodSandbox` of pod `name` in this fixture's namespace; returns what
    /// `PodSandboxStatus` then reports.
    fn run_pod(&self, name: &str) -> Pod {
        let uid = testbed::unique("uid");
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.clone(),
                namespace: self.k8s_ns.clone(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: self.path(&format!("logs/{name}")).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}/pod{uid}", self.cgroup),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        let id = self.call(|mut c| async move { c.run_pod_sandbox(req).await }).pod_sandbox_id;
        self.sandboxes.borrow_mut().push(id.clone());
        let (status, info) = self.status(&id);
        assert_eq!(status.state, PodSandboxState::SandboxReady as i32, "{status:?}");
        let meta = status.metadata.clone().unwrap_or_default();
        assert_eq!((meta.namespace.as_str(), meta.name.as_str()), (self.k8s_ns.as_str(), name));
        let network = status.network.clone().unwrap_or_default();
        assert!(network.additional_ips.is_empty(), "IPv4 only: {network:?}");
        let ip = network
            .ip
            .parse()
            .unwrap_or_else(|e| panic!("sandbox IP {:?}: {e}\n{}", network.ip, self.logs()));
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no network namespace path in the sandbox info: {info}"));
        Pod { id, name: name.to_string(), uid, ip, netns }
    }

    /// `PodSandboxStatus` (verbose) and its `info` JSON.
    fn status(&self, id: &str) -> (PodSandboxStatus, Value) {
        let req = PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose: true };
        let resp = self.call(|mut c| async move { c.pod_sandbox_status(req).await });
        let info = resp.info.get("info").and_then(|s| serde_json::from_str(s).ok()).unwrap_or(Value::Null);
        (resp.status.unwrap_or_else(|| panic!("no status for {id}")), info)
    }

    /// `StopPodSandbox` then `RemovePodSandbox`, as kubelet deletes a pod.
    fn stop_and_remove(&self, id: &str) {
        let req = StopPodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.call(|mut c| async move { c.stop_pod_sandbox(req).await });
        let req = RemovePodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.call(|mut c| async move { c.remove_pod_sandbox(req).await });
    }

    fn list_pods(&self) -> Result<Vec<String>, String> {
        let pods =
            self.try_call(|mut c| async move { c.list_pod_sandbox(ListPodSandboxRequest::default()).await })?;
        Ok(pods.items.into_iter().map(|p| p.id).collect())
    }

    /// `argv` run in the pod's network namespace (the host's binaries).
    fn in_pod(&self, pod: &Pod, argv: &[&str]) -> Result<String, String> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", pod.netns.display())).arg("--").args(argv);
        testbed::run(&mut c).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// What the chained `cni-probe` recorded for container `id`.
    fn probe_calls(&self, id: &str) -> Vec<Value> {
        std::fs::read_to_string(self.path("probe/calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|c| c["env"]["CNI_CONTAINERID"] == id)
            .collect()
    }

    fn handle(&self, id: &str) -> String {
        format!("{}.{id}", self.net)
    }

    /// Keys of the pod records (workload endpoints) in this fixture's namespace.
    fn pod_records(&self) -> Vec<String> {
        let store = CalicoImpl::open_file_store(self.dir.path()).unwrap();
        let prefix = format!("{}{}/", model::workload_endpoints_prefix(), self.k8s_ns);
        store.list(&prefix).unwrap().into_iter().map(|kv| kv.key).collect()
    }

    /// libcni's cache files of this fixture's pods: those of its network and
    /// the loopback network containerd adds, named by container ID.
    fn cached_results(&self) -> Vec<PathBuf> {
        let ids = self.sandboxes.borrow();
        let Ok(entries) = std::fs::read_dir(CNI_RESULTS) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&format!("{}-", self.net))
                    || ids.iter().any(|id| name.contains(&format!("-{id}-")))
            })
            .map(|e| e.path())
            .collect()
    }

    fn node_links(&self) -> String {
        self.node.exec(&["ip", "-br", "link"])
    }

    fn node_route(&self, ip: IpAddr) -> String {
        self.node.exec(&["ip", "route", "show", &format!("{ip}/32")])
    }

    /// Every cgroup directory of this test (in each hierarchy), deepest first.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.filter_map(|e| e.ok()) {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        walk(&e.path(), out);
                    }
                }
            }
            out.push(dir.to_path_buf());
        }
        let mut out = Vec::new();
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.filter_map(|e| e.ok()) {
                let top = h.path().join(&self.cgroup);
                if top.is_dir() {
                    walk(&top, &mut out);
                }
            }
        }
        out
    }

    /// Mount points at or under the temporary directory, innermost last.
    fn mounts(&self) -> Vec<PathBuf> {
        let root = self.dir.path();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(unescape_mount_path(p)))
            .filter(|p| p.starts_with(root))
            .collect()
    }

    /// SIGKILL containerd's process group (its shims live on).
    fn kill_containerd(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }

    /// The socket a shim serving sandbox `id` listens on: containerd names it
    /// sha256("<containerd address>/<namespace>/<id>") in [`SHIM_SOCKETS`].
    fn shim_socket(&self, id: &str) -> PathBuf {
        let key = format!("{}/{CRI_NAMESPACE}/{id}", self.socket().display());
        Path::new(SHIM_SOCKETS).join(sha256_hex(key.as_bytes()))
    }
}

/// /proc/self/mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // 1. Delete the pods as kubelet would, so their CNI DELs run (veths,
        //    IPs, pod records, libcni's cache). Best effort: containerd may be
        //    what failed.
        if self.channel.is_some() && matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None))) {
            let mut ids = self.sandboxes.borrow().clone();
            ids.extend(self.list_pods().unwrap_or_default());
            ids.sort();
            ids.dedup();
            for id in ids {
                let stop = StopPodSandboxRequest { pod_sandbox_id: id.clone() };
                let _ = self.try_call(|mut c| async move { c.stop_pod_sandbox(stop).await });
                let remove = RemovePodSandboxRequest { pod_sandbox_id: id };
                let _ = self.try_call(|mut c| async move { c.remove_pod_sandbox(remove).await });
            }
        }
        // 2. containerd and its process group.
        self.kill_containerd();
        // 3. The shims (their own process groups, but in the node netns), and
        //    the pods' processes (in the pods' netns, found by cgroup).
        self.node.kill_all();
        let cgroups = self.cgroup_dirs();
        for dir in &cgroups {
            for pid in
                std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().split_whitespace()
            {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
        }
        // 4. Mounts under the temporary directory (pod netns, rootfs, shm),
        //    innermost first; detached, since a dying process may still hold one.
        for _ in 0..3 {
            let mounts = self.mounts();
            if mounts.is_empty() {
                break;
            }
            for m in mounts.iter().rev() {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // 5. The cgroups, once their killed processes have exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.cgroup_dirs().is_empty() && Instant::now() < deadline {
            for dir in self.cgroup_dirs() {
                let _ = std::fs::remove_dir(dir);
            }
            if !self.cgroup_dirs().is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // 6. What the pods left at fixed paths: libcni's cache, shim sockets.
        for f in self.cached_results() {
            let _ = std::fs::remove_file(f);
        }
        for id in self.sandboxes.borrow().iter() {
            let _ = std::fs::remove_file(self.shim_socket(id));
        }
        support::remove_created_dirs();
        // The node netns and the temporary directory go with the fields.
    }
}

/// Two pods through CRI: our IPs in the status, the Kubernetes veth names,
/// node → pod and pod → pod traffic; then kubelet's delete (Stop + Remove,
/// two CNI DELs) leaves nothing in the node or the datastore.
fn pods_through_cri(version: &str) {
    let started = Instant::now();
    let c = Containerd::start(version);
    eprintln!("containerd {version}: ready in {:?}", started.elapsed());
    let pods = [c.run_pod("pod-a"), c.run_pod("pod-b")];
    eprintln!("containerd {version}: two pods up after {:?}", started.elapsed());
    let pool: IpNetwork = POOL.parse().unwrap();
    assert_ne!(pods[0].ip, pods[1].ip);
    let allocs = support::allocations(c.dir.path());
    for p in &pods {
        // containerd reports the address our IPAM allocated to this sandbox.
        assert!(pool.contains(p.ip), "{} outside {POOL}", p.ip);
        assert!(
            allocs.contains(&(p.ip, Some(c.handle(&p.id)))),
            "{} not held by {}: {allocs:?}",
            p.ip,
            c.handle(&p.id)
        );
        assert!(support::handle_exists(c.dir.path(), &c.handle(&p.id)));
        // A Kubernetes pod (containerd sent K8S_POD_NAMESPACE/NAME): the host
        // veth is named after <namespace>.<pod>, and the node routes the /32 to it.
        let veth = veth_name(&c.k8s_ns, &p.name);
        assert!(c.node_links().contains(&format!("{veth}@")), "no {veth}: {}", c.node_links());
        let route = c.node_route(p.ip);
        assert!(route.contains(&format!("dev {veth}")), "route to {}: {route:?}", p.ip);
        let addr = c.in_pod(p, &["ip", "-4", "-o", "addr", "show", "eth0"]).unwrap();
        assert!(addr.contains(&format!("{}/32", p.ip)), "{addr}");
        // What containerd sent: one ADD with the pod's identity.
        let calls = c.probe_calls(&p.id);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0]["command"], "ADD");
        let args = calls[0]["env"]["CNI_ARGS"].as_str().unwrap_or_default();
        for want in [
            format!("K8S_POD_NAMESPACE={}", c.k8s_ns),
            format!("K8S_POD_NAME={}", p.name),
            format!("K8S_POD_INFRA_CONTAINER_ID={}", p.id),
            format!("K8S_POD_UID={}", p.uid),
            "IgnoreUnknown=1".to_string(),
        ] {
            assert!(args.split(';').any(|a| a == want), "{want} not in CNI_ARGS {args:?}");
        }
        assert_eq!(calls[0]["env"]["CNI_NETNS"], p.netns.display().to_string());
        // libcni inside containerd cached the result at its fixed path.
        let cache = Path::new(CNI_RESULTS).join(format!("{}-{}-eth0", c.net, p.id));
        assert!(cache.exists(), "no {}", cache.display());
    }
    assert_eq!(c.pod_records().len(), 2, "{:?}", c.pod_records());
    // Traffic: node → each pod, and pod ↔ pod through the node.
    for p in &pods {
        c.node.exec(&["ping", "-c", "1", "-W", "2", &p.ip.to_string()]);
    }
    let (a, b) = (&pods[0], &pods[1]);
    c.in_pod(a, &["ping", "-c", "1", "-W", "2", &b.ip.to_string()]).unwrap();
    c.in_pod(b, &["ping", "-c", "1", "-W", "2", &a.ip.to_string()]).unwrap();

    // kubelet deletes the pods: StopPodSandbox + RemovePodSandbox.
    for p in &pods {
        c.stop_and_remove(&p.id);
    }
    assert_eq!(c.list_pods().unwrap(), Vec::<String>::new());
    let allocs = support::allocations(c.dir.path());
    for p in &pods {
        // Two DELs: Stop's with the netns (and, from cniVersion 0.4.0 on, the
        // cached result as prevResult), Remove's without a netns or a result.
        let calls = c.probe_calls(&p.id);
        let commands: Vec<&str> = calls.iter().map(|c| c["command"].as_str().unwrap_or_default()).collect();
        assert_eq!(commands, ["ADD", "DEL", "DEL"], "{calls:?}");
        assert_eq!(calls[1]["env"]["CNI_NETNS"], p.netns.display().to_string(), "{:?}", calls[1]);
        let prev = calls[1]["stdin"].get("prevResult").is_some();
        assert_eq!(
            prev,
            c.version != "0.3.1",
            "prevResult in the first DEL of a {} conflist: {:?}",
            c.version,
            calls[1]
        );
        assert_eq!(calls[2]["env"]["CNI_NETNS"].as_str().unwrap_or_default(), "", "{:?}", calls[2]);
        assert!(calls[2]["stdin"].get("prevResult").is_none(), "{:?}", calls[2]);
        // Nothing left of the pod: veth, route, netns, shim socket, IP, handle,
        // record, cache.
        let veth = veth_name(&c.k8s_ns, &p.name);
        assert!(!c.node_links().contains(&veth), "{veth} left: {}", c.node_links());
        assert_eq!(c.node_route(p.ip).trim(), "", "route to {} left", p.ip);
        assert!(!p.netns.exists(), "netns {} left", p.netns.display());
        assert!(!c.shim_socket(&p.id).exists(), "shim socket of {} left", p.name);
        assert!(!allocs.iter().any(|(ip, _)| *ip == p.ip), "{} still allocated: {allocs:?}", p.ip);
        assert!(!support::handle_exists(c.dir.path(), &c.handle(&p.id)), "handle of {} left", p.name);
    }
    assert_eq!(c.pod_records(), Vec::<String>::new());
    assert_eq!(c.cached_results(), Vec::<PathBuf>::new(), "libcni cache entries left");
    eprintln!("containerd {version}: done in {:?}", started.elapsed());
}

#[test]
fn containerd_cri_pods_on_a_1_0_0_conflist() {
    pods_through_cri("1.0.0");
}

#[test]
fn containerd_cri_pods_on_a_0_3_1_conflist() {
    pods_through_cri("0.3.1");
}

/// The fixture's own teardown, when the graceful path is gone: containerd
/// dies with a pod running (its shim and sandbox process live on), and
/// dropping the fixture must still leave nothing behind.
#[test]
fn containerd_teardown_after_containerd_died_leaves_nothing() {
    let mut c = Containerd::start("1.0.0");
    let pod = c.run_pod("pod-c");
    let (_, info) = c.status(&pod.id);
    let pid = info["pid"].as_u64().unwrap_or_else(|| panic!("no sandbox pid in {info}"));
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let shim = c.shim_socket(&pod.id);
    assert!(shim.exists(), "shim socket {} not where containerd puts it", shim.display());
    let cache = c.cached_results();
    assert_eq!(cache.len(), 2, "loopback + {} cache entries: {cache:?}", c.net);
    let cgroups = c.cgroup_dirs();
    assert!(!cgroups.is_empty(), "no cgroup under /{}", c.cgroup);
    let mounts = c.mounts();
    assert!(mounts.contains(&pod.netns), "{} not mounted: {mounts:?}", pod.netns.display());
    let (dir, node) = (c.dir.path().to_path_buf(), c.node.path());
    c.kill_containerd();
    assert!(proc_dir.exists(), "the sandbox process died with containerd");
    drop(c);
    // Killed: gone, or a zombie that init (its parent since the shim died)
    // has yet to reap.
    let state = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
    let state = state.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    assert!(matches!(state, None | Some('Z') | Some('X')), "sandbox process {pid} left: state {state:?}");
    assert!(!shim.exists(), "{} left", shim.display());
    for f in &cache {
        assert!(!f.exists(), "{} left", f.display());
    }
    for g in &cgroups {
        assert!(!g.exists(), "{} left", g.display());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&dir.display().to_string()), "mounts under {} left", dir.display());
    assert!(!dir.exists() && !node.exists());
}
