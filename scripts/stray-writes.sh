#!/usr/bin/env bash
# Tests write only inside their own temporary directories. This lists the
# machine paths a test would write to if its config fell back to a default
# (the file store and IPAM state in /var/lib/calico-rs, kube-proxy-rules' conntrack
# state in /var/lib/kube-proxy-rules, Calico's nodename and
# MTU files, the CNI config and plugin directories, libcni's result cache)
# before the tests, and fails after them if anything there appeared or went.
#
#   scripts/stray-writes.sh snapshot FILE   # before
#   scripts/stray-writes.sh compare FILE    # after: exit 1 naming the paths
set -euo pipefail
PATHS=(/var/lib/calico-rs /var/lib/calico /var/lib/kube-proxy-rules /etc/cni/net.d /opt/cni/bin /var/lib/cni)
list() { find "${PATHS[@]}" 2>/dev/null | sort || true; }
case "${1:-}" in
  snapshot) list > "$2" ;;
  compare)
    now=$(mktemp); trap 'rm -f "$now"' EXIT; list > "$now"
    if ! diff -q "$2" "$now" >/dev/null; then
      echo "tests wrote outside their temporary directories (+ appeared, - went):" >&2
      diff "$2" "$now" | sed -n 's/^> /  + /p; s/^< /  - /p' >&2
      exit 1
    fi ;;
  *) echo "usage: $0 snapshot|compare FILE" >&2; exit 2 ;;
esac
