#!/usr/bin/env bash
# One node, two pods, on the embedded file store.
#
# Everything happens inside network namespaces this script creates: a "node"
# namespace standing in for the host, and one namespace per pod. The plugins
# are installed into a scratch DESTDIR and executed the way kubelet/containerd
# execute them: CNI_* environment, the network config on stdin, the result on
# stdout. Nothing is added to the machine's own namespace; everything is
# removed on exit, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

id=$$
NODE="demo-node-$id"
PODS=("demo-pod-a-$id" "demo-pod-b-$id")
NAMES=("nginx-demo-1-a" "nginx-demo-1-b")
WORK=$(mktemp -d /tmp/calico-rs-demo.XXXXXX)
ROOT="$WORK/root"            # DESTDIR of `make install`
STORE="$WORK/store"          # the embedded datastore
CNI_BIN_DIR="$ROOT/opt/cni/bin"
CONF="$WORK/net.conf"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
    set +e
    for i in 0 1; do
        [ -e "/run/netns/${PODS[$i]}" ] && cni DEL "${PODS[$i]}" "${NAMES[$i]}" >/dev/null 2>&1
        ip netns del "${PODS[$i]}" 2>/dev/null
    done
    ip netns del "$NODE" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# cni COMMAND POD-NETNS POD-NAME: run the installed `calico` plugin inside the
# node namespace, as a runtime would.
cni() {
    local cmd=$1 netns=$2 pod=$3
    nsenter --net="/run/netns/$NODE" -- env -i \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        CNI_COMMAND="$cmd" CNI_CONTAINERID="ctr-$pod" CNI_NETNS="/run/netns/$netns" \
        CNI_IFNAME=eth0 CNI_PATH="$CNI_BIN_DIR" \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod" \
        "$CNI_BIN_DIR/calico" <"$CONF"
}

say "install the plugins into a scratch root (make install DESTDIR=...)"
make -s install DESTDIR="$ROOT" >/dev/null
ls -l "$CNI_BIN_DIR"

cat >"$CONF" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "type": "calico",
  "nodename": "demo-node",
  "datastore_type": "file",
  "datastore_path": "$STORE",
  "mtu": 1500,
  "log_level": "info",
  "log_file_path": "$WORK/cni.log",
  "ipam": { "type": "calico-ipam", "ipv4_pools": ["10.244.0.0/16"] }
}
EOF

say "create the node namespace $NODE and two pod namespaces"
ip netns add "$NODE"
ip -n "$NODE" link set lo up
# A real node has an uplink and a default route. Proxy-ARP answers a pod's
# ARP for 169.254.1.1 only when the node would route that address out of a
# *different* interface than the one the request came in on, so the demo node
# gets an uplink with a default route: a veth pair whose both ends stay in the
# node namespace (this kernel has no dummy links), so traffic to it goes nowhere.
ip -n "$NODE" link add uplink type veth peer name uplink-peer
ip -n "$NODE" addr add 198.51.100.10/24 dev uplink
ip -n "$NODE" link set uplink-peer up
ip -n "$NODE" link set uplink up
ip -n "$NODE" route add default via 198.51.100.1 dev uplink
for p in "${PODS[@]}"; do ip netns add "$p"; done

for i in 0 1; do
    say "ADD pod default/${NAMES[$i]} (CNI_COMMAND=ADD calico < net.conf)"
    cni ADD "${PODS[$i]}" "${NAMES[$i]}" | tee "$WORK/result-$i.json"
done

IP_A=$(ip -n "${PODS[0]}" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
IP_B=$(ip -n "${PODS[1]}" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)

say "the node: cali veths (MAC ee:ee:ee:ee:ee:ee, proxy-ARP) and /32 routes"
ip -n "$NODE" -br link show type veth | grep -v uplink
ip -n "$NODE" route show
for l in $(ip -n "$NODE" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^cali'); do
    echo "$l: proxy_arp=$(ip netns exec "$NODE" cat /proc/sys/net/ipv4/conf/$l/proxy_arp)"
done

say "pod A (${NAMES[0]}): eth0 has a /32, default route via 169.254.1.1"
ip -n "${PODS[0]}" -br addr show dev eth0
ip -n "${PODS[0]}" route show

say "pod A -> pod B ($IP_A -> $IP_B): routed by the node, ARP for 169.254.1.1 answered by proxy-ARP"
ip netns exec "${PODS[0]}" ping -c 2 -W 2 "$IP_B"

say "node -> pod A ($IP_A) over its /32 dev cali route"
ip netns exec "$NODE" ping -c 2 -W 2 "$IP_A"

say "the datastore: IPAM block, affinity, handles and pod records (calico's etcd v3 layout)"
if [ -x "$ROOT/usr/local/bin/calicoctl" ]; then
    DATASTORE_TYPE=file DATASTORE_PATH="$STORE" "$ROOT/usr/local/bin/calicoctl" ipam show --show-blocks || true
fi

for i in 0 1; do
    say "DEL pod default/${NAMES[$i]}"
    cni DEL "${PODS[$i]}" "${NAMES[$i]}"
done

say "after DEL: no cali veth, no pod route left on the node"
ip -n "$NODE" -br link show type veth | grep -v uplink || true
ip -n "$NODE" route show | grep -v uplink || true
echo "(nothing above = clean)"
say "demo finished; namespaces and scratch files are removed on exit"
