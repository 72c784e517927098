//! The live mesh for real: pinned glommio shards on two cores, shared-memory rings between
//! them, bots crossing server and core borders for a few seconds; then the audit of every entity.

use std::time::Duration;

use shardmesh::runtime::mesh::{run, MeshConfig};

#[test]
fn two_cores_for_a_few_seconds_lose_and_duplicate_nothing() {
    let cfg = MeshConfig {
        warmup: Duration::from_millis(500),
        seed: 11,
        bot_activity: 0.5,
        ..MeshConfig::bots(2, 600, Duration::from_secs(3))
    };
    let summary = run(cfg).expect("the mesh starts");
    assert_eq!(summary.audit_error, None);
    assert_eq!(summary.lost_entities, 0);
    assert_eq!(summary.duplicate_entities, 0);
    assert_eq!(summary.items_end, summary.items_start, "the same items as at the start");
    assert!(summary.handoffs > 50, "bots crossed server borders: {} handoffs", summary.handoffs);
    assert!(summary.transfers > 50, "and core borders: {} transfers between slices", summary.transfers);
    // A liveness check, not a timing one: a loaded machine may drop ticks, never all of them.
    assert!(summary.ticks >= 10, "{} ticks counted in 2.5 s at 30 Hz", summary.ticks);
    assert_eq!(summary.ring_errors, 0);
}
