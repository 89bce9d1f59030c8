#!/usr/bin/env bash
# The two-node scenario of README.md (*What the demos show*, `make demo-lab`)
# on a lab of network namespaces on this machine: a top-of-rack router
# (BIRD), node-a and node-b (our CNI plugins, node agent, BIRD and rule
# generator each), an etcd host and an outside client. One request is
# narrated hop by hop, then everything is torn down.
set -euo pipefail
cd "$(dirname "$0")/.."
exec target/release/calico-lab demo --config calico-lab/lab.json "$@"
