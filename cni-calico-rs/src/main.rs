//! `calico`: the CNI plugin binary. Everything is in the library; see
//! `cni_calico::plugin` for ADD / DEL / CHECK / STATUS / GC.

fn main() {
    cni_proto::main(&cni_calico::Calico)
}
