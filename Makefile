# calico-rs: the pod-networking data plane (Calico CNI + IPAM + kube-proxy rules) in Rust.
#
#   make deps     install the Debian packages the build and the tests need (idempotent)
#   make build    build every binary (release)
#   make install  install the CNI plugins and tools (DESTDIR-aware)
#   make test     unit + integration tests (namespaces only; needs root)
#   make demo     see README ("What the demos show"): a node with two pods, then the two-node lab
#   make bench    ADD+DEL cycles vs the reference plugins, IPAM throughput, rule rendering,
#                 block claim -> route at the ToR in the lab
#   make conformance  the CNI conformance table (ours vs ptp+host-local)

CARGO    ?= cargo
DESTDIR  ?=
PREFIX   ?= /usr/local
CNI_BIN  ?= /opt/cni/bin
CNI_CONF ?= /etc/cni/net.d

# Debian packages: build (protoc and the well-known .proto files it only
# *recommends*, libprotobuf-dev, for etcd-client; CA certificates for cargo's
# downloads), the real parts the tests drive (etcd, BIRD, iptables/nftables,
# conntrack, reference plugins, podman, containerd), the tools run inside pods
# (nginx, curl, ping, busybox), openssl for the etcd TLS test's certificates and
# python3 for the JSON the runtime tests' script plugins print.
# Installed with --no-install-recommends: every package a step needs is named.
DEB_PACKAGES = build-essential pkg-config protobuf-compiler libprotobuf-dev ca-certificates \
	iproute2 iptables nftables conntrack \
	etcd-server etcd-client bird2 containernetworking-plugins podman runc containerd \
	nginx-light curl iputils-ping busybox-static procps psmisc util-linux kmod openssl python3 hyperfine

PLUGINS = calico calico-ipam
TOOLS   = calicoctl kube-proxy-rules calico-node-agent cnitool

# The two plugins are executed once per pod and per command, so their start
# counts: linked statically (glibc, crt-static) each starts ~0.3 ms sooner
# and peaks ~1 MiB lower than dynamically linked. A static-pie relocates
# itself before `main`, writing every pointer in its read-only data: one
# codegen unit with fat LTO leaves less code and data to relocate and fault
# in, and packed relative relocations (DT_RELR, glibc >= 2.36) shrink the
# table it reads; together exec to first system call went from 0.46-0.50 to
# 0.36-0.39 ms and page faults from 103 to 71 per run (a static-pie C
# program takes 0.21 ms), for ~2 minutes more of build. `--target` keeps
# the flags away from build scripts and proc-macros, so these land in their
# own directory; `install` and the benchmarks use them. Tests run the ordinary
# debug build (same code).
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
STATIC_DIR  := target/$(HOST_TRIPLE)/release
# DT_RELR only where the C library relocates it (glibc 2.36, Debian 12, and
# later); an older one would start a binary with its pointers unrelocated.
GLIBC_MINOR := $(shell getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc 2\.\([0-9]*\).*/\1/p')
RELR_FLAG   := $(shell [ "$(GLIBC_MINOR)" -ge 36 ] 2>/dev/null && echo "-C link-arg=-Wl,-z,pack-relative-relocs")

.PHONY: all deps build build-debug install test conformance demo demo-node demo-lab bench fmt clean

all: build

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first"; exit 1; }

build:
	$(CARGO) build --release --workspace --bins
	RUSTFLAGS="-C target-feature=+crt-static $(RELR_FLAG)" \
	CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
	$(CARGO) build --release --target $(HOST_TRIPLE) \
		-p cni-calico-rs -p ipam-block --bin calico --bin calico-ipam

build-debug:
	$(CARGO) build --workspace --bins

install: build
	install -d $(DESTDIR)$(CNI_BIN) $(DESTDIR)$(CNI_CONF) $(DESTDIR)$(PREFIX)/bin
	for b in $(PLUGINS); do install -m 0755 $(STATIC_DIR)/$$b $(DESTDIR)$(CNI_BIN)/$$b; done
	for b in $(TOOLS); do [ ! -f target/release/$$b ] || install -m 0755 target/release/$$b $(DESTDIR)$(PREFIX)/bin/$$b; done
	install -m 0644 examples/10-calico.conflist $(DESTDIR)$(CNI_CONF)/10-calico.conflist

# Integration tests execute the debug binaries next to the test executables,
# so build them first. Tests create their own namespaces and need root.
# Tests create their own namespaces and temporary directories and leave
# nothing elsewhere: scripts/stray-writes.sh fails the run if they did.
test: deps build-debug
	@scripts/stray-writes.sh snapshot target/stray-writes.before
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) --no-print-directory conformance
	@scripts/stray-writes.sh compare target/stray-writes.before

conformance: deps build-debug
	$(CARGO) run -q -p conformance --bin conformance

demo: demo-node demo-lab

demo-node: deps build
	bash scripts/demo-node.sh

demo-lab: deps build
	bash scripts/demo-lab.sh

# Each benchmark measures the reference in the same run and prints ratios.
bench: deps build
	@echo "== 1/8 CNI ADD+DEL cycle: calico + calico-ipam vs ptp + host-local"
	target/release/cni-bench --ours $(STATIC_DIR)
	@echo; echo "== 2/8 full-pod throughput: 3 nodes x 300 pods, 32 ADDs in flight, etcd / file / ptp+host-local"
	target/release/cni-bench --throughput --ours $(STATIC_DIR)
	@echo; echo "== 3/8 IPAM alone: etcd round trips per allocation; 3 nodes x 300 calico-ipam ADDs vs host-local"
	target/release/ipam-bench
	@echo; echo "== 4/8 service rules: 10,000 services x 10 endpoints, render vs iptables-restore"
	@echo "   (iptables-legacy-restore: the nf_tables iptables-restore 1.8.9 is super-linear in the"
	@echo "    number of chains here and does not finish 10,000 services within an hour; see below)"
	target/release/kube-proxy-rules bench --restore-command iptables-legacy-restore
	@echo; echo "   the same at 1,000 services with the nf_tables iptables-restore:"
	target/release/kube-proxy-rules bench --services 1000
	@echo; echo "== 5/8 service rules, nftables mode: 10,000 services x 10 endpoints, render vs nft -f"
	@echo "   kube-proxy's layout (~3 min):"
	target/release/kube-proxy-rules bench --proxy-mode nftables --nftables-layout kube-proxy
	@echo; echo "   --nftables-layout endpoint-maps (endpoints in one DNAT map; ~30 s):"
	target/release/kube-proxy-rules bench --proxy-mode nftables --nftables-layout endpoint-maps
	@echo; echo "   both layouts at 1,000 services (target: full nft -f <= 1 s):"
	target/release/kube-proxy-rules bench --proxy-mode nftables --services 1000 --nftables-layout kube-proxy
	target/release/kube-proxy-rules bench --proxy-mode nftables --services 1000 --nftables-layout endpoint-maps
	@echo; echo "== 6/8 network programming latency through the Kubernetes API: one EndpointSlice change"
	@echo "   (a watch event of the test API server) to the rules committed, p50/p99 over 100 changes,"
	@echo "   render and apply apart; run's peak RSS. 10,000 services: iptables through the legacy binaries"
	target/release/kube-proxy-api-bench --proxy-mode iptables --services 1000
	target/release/kube-proxy-api-bench --proxy-mode nftables --services 1000
	target/release/kube-proxy-api-bench --proxy-mode iptables --services 10000 --legacy-iptables
	target/release/kube-proxy-api-bench --proxy-mode nftables --services 10000
	@echo; echo "== 7/8 routing reaction in the lab: 50 block claims -> route at the tor (agent watching etcd, BIRD, BGP)"
	target/release/calico-lab bench-claims --claims 50
	@echo; echo "== 8/8 stale UDP flows: conntrack cleanup (one dump, delete by tuple) vs conntrack -D per filter"
	target/release/kube-proxy-rules bench --conntrack-entries 100000

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
