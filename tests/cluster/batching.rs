//! Reservation writes batched into nested etcd transactions, against a real
//! etcd: concurrent reservations of one node each get their own outcome (a
//! request reserved before is `Held`, the others `Ours`), and a mark whose
//! revision is stale fails alone among concurrent marks that succeed.

use std::sync::Arc;

use proofgate::cluster::{NodeRecord, Progress, Reserved, Session};

use super::etcd::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservation_writes_keep_their_own_outcomes() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let record = NodeRecord {
        node_id: "node-1".into(),
        address: "https://127.0.0.1:1".into(),
        origin: "proofgate/node-1".into(),
        vkey: String::new(),
        policy_version: String::new(),
        tree_size: 0,
        updated_unix_ms: 0,
        software: "test".into(),
        digest_key: "k1".into(),
    };
    let session = Session::join(etcd.options(), record, Arc::new(Progress::default))
        .await
        .expect("joins");
    let reservations =
        session.reservations("node-1", std::time::Duration::from_secs(3600), "k1".into());
    let hall = "hall-1.hall.proofgate";
    let before = [9u8; 32];
    let digest = [7u8; 32];
    // Five requests reserved earlier (another attempt, another body).
    for i in 0..5 {
        let first = reservations
            .reserve(hall, &format!("r{i}"), &before, 1)
            .await
            .expect("reserves");
        assert!(matches!(first, Reserved::Ours { .. }), "{first:?}");
    }
    let (sent_before, _) = reservations.etcd_counts();

    // Forty at once: the five conflicts are Held, each with its own record.
    let all = futures_util::future::join_all((0..40).map(|i| {
        let reservations = reservations.clone();
        async move {
            reservations
                .reserve(hall, &format!("r{i}"), &digest, 2)
                .await
                .expect("reserves")
        }
    }))
    .await;
    let mut ours = Vec::new();
    for (i, outcome) in all.into_iter().enumerate() {
        match outcome {
            Reserved::Held { reservation, .. } => {
                assert!(i < 5, "r{i} was free: {reservation:?}");
                assert_eq!(reservation.digest, hex::encode(before));
                assert!(!reservations.same_request(&reservation, &digest).unwrap());
            }
            Reserved::Ours { revision } => {
                assert!(i >= 5, "r{i} was reserved before");
                ours.push((i, revision));
            }
        }
    }
    assert_eq!(ours.len(), 35);
    let (sent, writes) = reservations.etcd_counts();
    assert!(sent - sent_before <= 40, "{sent} {writes}");

    // Marks at once; one names a stale revision and alone fails.
    let marked = futures_util::future::join_all(ours.iter().map(|&(i, revision)| {
        let reservations = reservations.clone();
        let stale = i == 20;
        async move {
            reservations
                .mark_decided(
                    hall,
                    &format!("r{i}"),
                    if stale { revision - 1 } else { revision },
                    &digest,
                    &format!("node-1.{i:024x}"),
                    3,
                )
                .await
                .expect("etcd answers")
        }
    }))
    .await;
    for (&(i, _), marked) in ours.iter().zip(marked) {
        assert_eq!(marked, i != 20, "r{i}");
        let (held, _) = reservations
            .get(hall, &format!("r{i}"))
            .await
            .unwrap()
            .expect("still there");
        let want = format!("node-1.{i:024x}");
        assert_eq!(held.decided(), (i != 20).then_some(want.as_str()), "r{i}");
    }
    session.leave().await;
}
