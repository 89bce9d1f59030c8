//! Shared test helpers: every test works in namespaces it created itself.
#![allow(dead_code)]

use netlink_util::Netns;

/// A fresh named netns (removed on drop) and an open handle to it.
pub struct TestNs {
    pub tb: testbed::Netns,
    pub ns: Netns,
}

impl TestNs {
    pub fn new() -> TestNs {
        let tb = testbed::Netns::new("nlu");
        let ns = Netns::open(tb.path()).unwrap();
        TestNs { tb, ns }
    }

    /// `ip -n <ns> <args>` output.
    pub fn ip(&self, args: &str) -> String {
        let mut argv = vec!["ip", "-n", self.tb.name()];
        argv.extend(args.split_whitespace());
        testbed::run(std::process::Command::new(argv[0]).args(&argv[1..]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `sysctl -n <key>` run by a process inside the namespace.
    pub fn sysctl(&self, key: &str) -> String {
        self.tb.exec(&["sysctl", "-n", key]).trim().to_string()
    }
}

/// A link name unique to this test run (at most 15 characters).
pub fn name(prefix: &str) -> String {
    testbed::unique(prefix)
}
