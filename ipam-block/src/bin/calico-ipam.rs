//! `calico-ipam`: Calico's block IPAM as a CNI IPAM plugin. The protocol
//! lives in `cni-proto`, the plugin in `ipam_block::cni`, policy in `ipam_block`.

fn main() {
    cni_proto::main(&ipam_block::cni::CalicoIpam)
}
