//! The lab with the agent watching etcd: block claims reach the tor (the
//! measurement `calico-lab bench-claims` times, here only run to completion,
//! never timed), and the pools' natOutgoing seen by the client, by pods and
//! through a Service.

use std::path::PathBuf;

use calico_lab::{Bins, Lab, LabConfig};

fn lab() -> Lab {
    let cfg = LabConfig::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab.json")).unwrap();
    let bins = testbed::target_bin("calico-node-agent").parent().unwrap().to_path_buf();
    Lab::up(&cfg, &Bins::new(bins)).unwrap()
}

#[test]
fn every_claim_reaches_the_tor_and_is_withdrawn_on_release() {
    let lab = lab();
    let timings = lab.measure_claims("node-a", 5).unwrap();
    assert_eq!(timings.len(), 5);
    // The node's blackhole (the agent) comes before the tor's route (BIRD after it).
    assert!(timings.iter().all(|t| t.to_node <= t.to_tor), "{timings:?}");
    // Every claim was released: nothing of them is left at the tor.
    let routes = lab.tor_routes().unwrap();
    assert!(!routes.contains("10.244.255."), "{routes}");

    // The reference rounds hand BIRD back the agent's own configuration.
    let conf = lab.run_dir.join("node-a").join("bird.conf");
    let before = std::fs::read_to_string(&conf).unwrap();
    assert_eq!(lab.measure_bird_alone("node-a", 3).unwrap().len(), 3);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), before);
    let routes = lab.tor_routes().unwrap();
    assert!(!routes.contains("10.244.191."), "reference blocks left at the tor: {routes}");
    // And the agent still routes claims afterwards.
    assert_eq!(lab.measure_claims("node-a", 1).unwrap().len(), 1);
}

#[test]
fn nat_outgoing_masquerades_only_traffic_leaving_the_pools() {
    let mut lab = lab();
    lab.deploy_scenario().unwrap();
    let lines = lab.check_nat_outgoing().unwrap();
    for l in &lines {
        println!("{l}");
    }
    // on and off, for both pods: to the client, to the other pod, to the Service.
    assert_eq!(lines.len(), 2 * 2 * 3, "{lines:#?}");
}
