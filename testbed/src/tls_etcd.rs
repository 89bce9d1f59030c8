//! An etcd that serves clients over TLS only, with client-certificate auth:
//! the certificates are made with `openssl` in its own temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An etcd that serves clients over TLS only, with client-certificate auth,
/// on a free port; its CA, client certificate and key are in `dir`
/// (`ca.pem`, `client.pem`, `client.key`).
pub struct TlsEtcd {
    pub dir: tempfile::TempDir,
    child: Child,
    pub endpoint: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsEtcd {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn start() -> TlsEtcd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ssl = |args: &[&str]| {
            crate::run(Command::new("openssl").args(args).current_dir(d)).unwrap();
        };
        let rsa = ["-newkey", "rsa:2048", "-nodes"];
        let ca = ["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca"];
        ssl(&[&["req", "-x509"][..], &rsa, &ca].concat());
        std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
            .unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for name in ["server", "client"] {
            let [key, csr, pem, ext] = ["key", "csr", "pem", "ext"].map(|x| format!("{name}.{x}"));
            let subj = format!("/CN={name}");
            ssl(&[&["req"][..], &rsa, &["-keyout", &key, "-out", &csr, "-subj", &subj]].concat());
            let sign = ["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
            ssl(&[&sign[..], &["-out", &pem, "-days", "1", "-extfile", &ext]].concat());
        }
        let (client_port, peer_port) = (crate::free_port(), crate::free_port());
        let endpoint = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(d.join("etcd.log")).unwrap();
        let f = |n: &str| d.join(n).display().to_string();
        let child = Command::new("etcd")
            .arg("--name=tls")
            .arg(format!("--data-dir={}", f("data")))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tls={peer}"))
            .arg(format!("--cert-file={}", f("server.pem")))
            .arg(format!("--key-file={}", f("server.key")))
            .arg(format!("--trusted-ca-file={}", f("ca.pem")))
            .arg("--client-cert-auth")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let etcd = TlsEtcd { dir, child, endpoint };
        let deadline = Instant::now() + Duration::from_secs(20);
        let f = |n: &str| etcd.file(n).display().to_string();
        loop {
            let ok = Command::new("curl")
                .args(["-sf", "-m", "1", "--cacert", &f("ca.pem"), "--cert", &f("client.pem")])
                .args(["--key", &f("client.key"), &format!("{}/health", etcd.endpoint)])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return etcd;
            }
            assert!(
                Instant::now() < deadline,
                "TLS etcd did not start: {}",
                std::fs::read_to_string(f("etcd.log")).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
