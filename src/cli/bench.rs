//! `proofgate bench`: the load generator against a running gateway.

use std::time::Duration;

use super::{BenchArgs, BenchBaseline, CliError, Report};
use crate::bench::{self, Baseline, BenchOptions};

/// `proofgate bench`: runs the baseline and submission phases; the report
/// has one line per phase.
pub async fn run(args: BenchArgs) -> Result<Report, CliError> {
    if let Some(transactions) = args.etcd_txn {
        let options = crate::cluster::ClusterOptions::new(args.etcd).validated()?;
        let pause = Duration::from_micros(args.etcd_pause_us);
        let measured =
            crate::cluster::txn_bench::run(&options, transactions.max(1), args.etcd_batch, pause)
                .await?;
        return Ok(Report {
            text: format!("{measured}\n"),
            ..Report::default()
        });
    }
    if let Some(applications) = args.applications {
        return disk(args, applications).await;
    }
    let mut fanout = Vec::with_capacity(args.fanout.len());
    for item in args.fanout {
        let Some((name, uri)) = item.split_once('=') else {
            return Err(CliError::Fanout(item));
        };
        fanout.push((name.to_owned(), uri.to_owned()));
    }
    let options = BenchOptions {
        endpoints: args.endpoint,
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.seconds),
        matter: args.matter,
        fanout,
        certs: (!args.insecure_plaintext).then_some(args.certs),
        baseline: match args.baseline {
            BenchBaseline::Health => Baseline::Health,
            BenchBaseline::Relay => Baseline::Relay,
        },
        policies: args.policies,
    };
    // A yardstick of the same work shape: the ratio is the figure.
    let ratio_of = if !options.fanout.is_empty() {
        Some("plain fan-out")
    } else if options.baseline == Baseline::Relay {
        Some("relay")
    } else {
        None
    };
    // Printed now: the phases take a while.
    println!(
        "bench: {} for {}s per phase at concurrency {}",
        options.endpoints.join(","),
        args.seconds,
        options.concurrency
    );
    let reports = bench::run(&options).await.map_err(CliError::Bench)?;
    let mut text: String = reports.iter().map(|r| format!("{r}\n")).collect();
    if let (Some(name), [baseline, submissions]) = (ratio_of, reports.as_slice()) {
        if baseline.per_second > 0.0 {
            text.push_str(&format!(
                "ratio gateway / {name}: {:.2}\n",
                submissions.per_second / baseline.per_second
            ));
        }
    }
    Ok(Report {
        text,
        ..Report::default()
    })
}

/// `proofgate bench --applications N`: a node of its own, N applications,
/// then the figures of its data folder.
async fn disk(args: BenchArgs, applications: u64) -> Result<Report, CliError> {
    if args.external {
        let endpoint = args.endpoint.first().cloned().unwrap_or_default();
        let options = bench::disk::ExternalOptions {
            applications,
            first: args.first,
            pending: args.pending,
            concurrency: args.concurrency,
            matter: args.matter,
            endpoint,
            certs: args.certs,
            node_pid: args.node_pid,
        };
        println!(
            "bench: the node at {}, applications disk-{}..disk-{} of {} (ids below {} pending) at concurrency {}",
            options.endpoint,
            options.first,
            options.first + applications,
            options.matter,
            options.pending,
            options.concurrency
        );
        let report = bench::disk::run_external(&options)
            .await
            .map_err(CliError::Bench)?;
        return Ok(Report {
            text: report.to_string(),
            ..Report::default()
        });
    }
    let options = bench::disk::DiskOptions {
        applications,
        pending: args.pending,
        concurrency: args.concurrency,
        matter: args.matter,
        data_dir: args.data_dir,
        keep: args.keep,
        store: crate::audit::StoreOptions {
            cache_bytes: args.cache_mb.max(1) * 1024 * 1024,
            compression: args.store_compression,
        },
    };
    println!(
        "bench: a node of its own, {applications} applications of {} ({} pending) at concurrency {}",
        options.matter, options.pending, options.concurrency
    );
    let report = bench::disk::run(&options).await.map_err(CliError::Bench)?;
    Ok(Report {
        text: report.to_string(),
        ..Report::default()
    })
}
