//! `proofgate bench --etcd URL --etcd-txn N`: the cost of the etcd write a
//! reservation makes, measured with the client and options the nodes use —
//! N create-if-absent transactions, one after the other, each on a new key
//! with a value the size of a reservation (`--etcd-batch B`: B such writes
//! nested in each transaction, as the batcher sends them under load;
//! `--etcd-pause-us P`: a pause of P µs before each transaction, as a node
//! at concurrency 1 leaves etcd idle while it decides). The keys live under
//! `<prefix>bench/` and are deleted at the end.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};

use super::{bounded, connect, ClusterError, ClusterOptions};

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct TxnBench {
    pub endpoints: String,
    pub transactions: usize,
    pub writes_per_transaction: usize,
    /// Idle time before each transaction (not counted in its latency).
    pub pause: Duration,
    pub total: Duration,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Writes whose compare failed (the key existed): 0 on a clean run.
    pub conflicts: usize,
}

impl std::fmt::Display for TxnBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.total.as_secs_f64().max(1e-9);
        write!(
            f,
            "etcd create-if-absent txn ({} against {}): {} sequential, {} write(s) each{}: {:.0} txn/s, {:.0} writes/s, mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, conflicts {}",
            if self.endpoints.contains(',') { "client over all members" } else { "one member" },
            self.endpoints,
            self.transactions,
            self.writes_per_transaction,
            if self.pause.is_zero() {
                String::new()
            } else {
                format!(", each after {} µs idle", self.pause.as_micros())
            },
            self.transactions as f64 / secs,
            (self.transactions * self.writes_per_transaction) as f64 / secs,
            ms(self.mean),
            ms(self.p50),
            ms(self.p99),
            self.conflicts,
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A value the size of a reservation record (JSON, ~250 bytes).
fn value(i: usize) -> String {
    format!(
        r#"{{"owner":"node-1","owner_lease":7587882843150123456,"digest":"{:064x}","digest_key":"hmac-sha256:{:064x}","reserved_unix_ms":{}}}"#,
        i, i, 1_700_000_000_000u64
    )
}

fn create(key: &str, i: usize) -> Txn {
    Txn::new()
        .when([Compare::create_revision(
            key.as_bytes(),
            CompareOp::Equal,
            0,
        )])
        .and_then([TxnOp::put(key.as_bytes(), value(i), None)])
}

/// Runs `transactions` sequential transactions of `batch` writes each, each
/// after `pause` of idle time.
pub async fn run(
    options: &ClusterOptions,
    transactions: usize,
    batch: usize,
    pause: Duration,
) -> Result<TxnBench, ClusterError> {
    let batch = batch.clamp(1, super::batch::MAX_BATCH);
    let client = connect(options).await?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let folder = format!("{}bench/{}-{stamp}/", options.prefix, std::process::id());
    let txn_of = |round: usize| {
        let keys: Vec<String> = (0..batch).map(|j| format!("{folder}{round}-{j}")).collect();
        if batch == 1 {
            create(&keys[0], round)
        } else {
            Txn::new().and_then(
                keys.iter()
                    .enumerate()
                    .map(|(j, k)| TxnOp::txn(create(k, round * batch + j)))
                    .collect::<Vec<_>>(),
            )
        }
    };
    // One round not counted: the connection is made on the first call.
    bounded(options, client.clone().txn(txn_of(usize::MAX / 2))).await?;
    let mut times = Vec::with_capacity(transactions);
    let mut conflicts = 0;
    let started = Instant::now();
    for round in 0..transactions {
        if !pause.is_zero() {
            // A thread sleeps to the µs; tokio's timer only to the ms.
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(pause)).await;
        }
        let t = Instant::now();
        let response = bounded(options, client.clone().txn(txn_of(round))).await?;
        times.push(t.elapsed());
        if batch == 1 {
            conflicts += usize::from(!response.succeeded());
        } else {
            conflicts += response
                .op_responses()
                .into_iter()
                .filter(|op| !matches!(op, etcd_client::TxnOpResponse::Txn(t) if t.succeeded()))
                .count();
        }
    }
    let total = started.elapsed();
    let _ = bounded(
        options,
        client
            .clone()
            .delete(folder.as_bytes(), Some(DeleteOptions::new().with_prefix())),
    )
    .await;
    times.sort();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    let count = u32::try_from(times.len().max(1)).unwrap_or(u32::MAX);
    Ok(TxnBench {
        endpoints: options.endpoints_text(),
        transactions,
        writes_per_transaction: batch,
        pause,
        total,
        mean: times.iter().sum::<Duration>() / count,
        p50: at(0.50),
        p99: at(0.99),
        conflicts,
    })
}
