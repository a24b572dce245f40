//! Offline work on a node's log (its server stopped) or an exported file:
//! `audit export / verify / replay / rebuild / rotate-key` and `stats`; and
//! `audit restore`, which rebuilds a data folder from a mirror.

use std::path::Path;
use std::time::Instant;

use super::{CliError, LogSource, Report, RestoreArgs};
use crate::audit::{self, report, Records};
use crate::clock::system_now_unix_ms;
use crate::operations::stats;
use crate::security;

/// `proofgate audit export`: every entry and checkpoint of `data_dir`'s log,
/// with the verifier key, into the file `out`.
pub fn export(data_dir: &Path, out: &Path) -> Result<Report, CliError> {
    let (entries, checkpoints) =
        audit::data_dir_records(data_dir).and_then(|records| audit::export(records, out))?;
    Ok(Report::line(format_args!(
        "exported {entries} entries and {checkpoints} checkpoints to {}",
        out.display()
    )))
}

/// What `audit verify --witness … --quorum K` requires.
pub struct Quorum {
    /// Witness vkeys (text, or files holding them).
    pub witnesses: Vec<String>,
    pub quorum: usize,
}

/// How `audit verify` checks and what it times.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyHow {
    /// Only a sample of checkpoint signatures, not every one.
    pub sample_signatures: bool,
    /// Also time raw SHA-256 over the same entry bytes.
    pub timing: bool,
}

/// `proofgate audit verify`: recomputes every leaf and root and checks
/// every checkpoint's size and root, and the signatures of a sample of
/// checkpoints (the newest among them: see [`audit::SignatureCheck`]),
/// against `vkey` (C2SP vkey text, or a file holding it) or else the key the
/// log carries; with `quorum`, also that the newest checkpoint carries valid
/// cosignatures by at least K of the witnesses. A log that does not verify,
/// or cannot be read to its end, is bad data (exit 65).
pub fn verify(
    source: &LogSource,
    vkey: Option<String>,
    quorum: Option<Quorum>,
    json: bool,
) -> Result<Report, CliError> {
    verify_with(source, vkey, quorum, VerifyHow::default(), json)
}

/// [`verify`], checking every signature or timing it as `how` says.
pub fn verify_with(
    source: &LogSource,
    vkey: Option<String>,
    quorum: Option<Quorum>,
    how: VerifyHow,
    json: bool,
) -> Result<Report, CliError> {
    let started = Instant::now();
    let vkey = vkey.map(|v| std::fs::read_to_string(&v).unwrap_or(v).trim().to_owned());
    let witnesses = match &quorum {
        None => Vec::new(),
        Some(q) => witness_keys(&q.witnesses)?,
    };
    let options = audit::VerifyOptions {
        signatures: if how.sample_signatures {
            audit::SignatureCheck::Sampled {
                every: audit::SIGNATURE_SAMPLE_EVERY,
            }
        } else {
            audit::SignatureCheck::All
        },
    };
    let mut r = open_records(source)?
        .and_then(|records| {
            audit::verify_records_with(records, vkey.as_deref(), options, progress("verified"))
        })
        .map_err(CliError::Check)?;
    let seconds = started.elapsed().as_secs_f64();
    if let (Some(q), true) = (&quorum, r.ok()) {
        let (valid, problems) = audit::count_cosignatures(&r.newest_note, &witnesses);
        if valid < q.quorum {
            let mut reason = format!(
                "the newest checkpoint (size {}) carries valid cosignatures by {valid} of the {} given witness(es); {} required (--quorum)",
                r.tree_size,
                witnesses.len(),
                q.quorum
            );
            for problem in problems {
                reason.push_str("; ");
                reason.push_str(&problem);
            }
            r.problem = Some(audit::Problem::Log { reason });
        } else {
            r.cosignatures = Some((valid, q.quorum));
        }
    }
    let mut text = if json {
        format!("{}\n", report::verify_json(&r, seconds))
    } else {
        report::verify_table(&r, seconds)
    };
    if how.timing {
        let pass = Instant::now();
        let (entries, raw) = raw_sha_seconds(source)?;
        let read = (pass.elapsed().as_secs_f64() - raw).max(0.0);
        let verify_rate = r.entries as f64 / seconds.max(1e-9);
        let raw_rate = entries as f64 / raw.max(1e-9);
        text.push_str(&format!(
            "  {:<22} {raw_rate:.0} entries/s: RFC 6962 leaf hashes of the same {entries} entries, in memory, one core ({raw:.2} s)\n  {:<22} {:.2} (verify / raw SHA-256)\n  {:<22} {:.0} records/s: the same pass reading every record (store open, read, decode) without hashing ({read:.2} s)\n",
            "raw SHA-256 baseline",
            "ratio",
            verify_rate / raw_rate.max(1e-9),
            "reading alone",
            entries as f64 / read.max(1e-9)
        ));
    }
    Ok(Report {
        text,
        warnings: Vec::new(),
        found_problem: !r.ok(),
    })
}

/// Seconds one core takes to leaf-hash every entry of `source`, the bytes
/// already in memory (read in windows of at most 256 MB, untimed): the raw
/// SHA-256 baseline of `audit verify --timing`. Returns (entries, seconds).
fn raw_sha_seconds(source: &LogSource) -> Result<(u64, f64), CliError> {
    const WINDOW_BYTES: usize = 256 * 1024 * 1024;
    let records = open_records(source)?.map_err(CliError::Check)?;
    let mut window: Vec<bytes::Bytes> = Vec::new();
    let mut window_bytes = 0usize;
    let (mut entries, mut seconds) = (0u64, 0f64);
    let mut sink = 0u8;
    let mut hash_window = |window: &mut Vec<bytes::Bytes>| {
        let started = Instant::now();
        for bytes in window.iter() {
            sink ^= audit::leaf_hash(bytes)[0];
        }
        seconds += started.elapsed().as_secs_f64();
        entries += window.len() as u64;
        window.clear();
    };
    for record in records {
        if let audit::LogRecord::Entry { bytes, .. } = record.map_err(CliError::Check)? {
            window_bytes += bytes.len();
            window.push(bytes);
            if window_bytes >= WINDOW_BYTES {
                hash_window(&mut window);
                window_bytes = 0;
            }
        }
    }
    hash_window(&mut window);
    std::hint::black_box(sink);
    Ok((entries, seconds))
}

/// `proofgate audit replay`: re-derives every decision from the logged policy
/// and signed answers. Any discrepancy, or a log that cannot be read to its
/// end, is bad data (exit 65).
pub fn replay(source: &LogSource, json: bool) -> Result<Report, CliError> {
    let started = Instant::now();
    let r = open_records(source)?
        .and_then(|records| audit::replay_records(records, progress("replayed")))
        .map_err(CliError::Check)?;
    let seconds = started.elapsed().as_secs_f64();
    let text = if json {
        format!("{}\n", report::replay_json(&r, seconds))
    } else {
        report::replay_table(&r, seconds)
    };
    Ok(Report {
        text,
        warnings: Vec::new(),
        found_problem: !r.discrepancies.is_empty(),
    })
}

/// `proofgate audit rebuild`: recomputes every projection from the entries of
/// a stopped node's `data_dir`; any difference is bad data (exit 65).
pub fn rebuild(data_dir: &Path, json: bool) -> Result<Report, CliError> {
    let started = Instant::now();
    let r = audit::rebuild_data_dir(data_dir)?;
    let seconds = started.elapsed().as_secs_f64();
    let text = if json {
        format!("{}\n", report::rebuild_json(&r, seconds))
    } else {
        report::rebuild_table(&r, seconds)
    };
    Ok(Report {
        text,
        warnings: Vec::new(),
        found_problem: !r.consistent(),
    })
}

/// `proofgate audit usage`: keys and bytes per key kind of a stopped node's
/// store, against the bytes its files take; per application where there are
/// applications.
pub fn usage(data_dir: &Path, json: bool) -> Result<Report, CliError> {
    let path = data_dir.join("log");
    let usage = audit::AuditStore::open(&path)?.usage(&path)?;
    let text = if json {
        format!("{}\n", report::usage_json(&usage))
    } else {
        report::usage_table(&usage)
    };
    Ok(Report {
        text,
        warnings: Vec::new(),
        found_problem: false,
    })
}

/// `proofgate audit compact`: the disk a stopped node's log, and each log
/// it mirrors (`D/mirrors/*`), holds but no longer uses, given back. Every
/// store is tried (a failure logged with its path); the first failure is
/// the command's.
pub fn compact(data_dir: &Path) -> Result<Report, CliError> {
    let mut stores = vec![("log".to_owned(), data_dir.join("log"))];
    for mirror in mirror_stores(&data_dir.join(crate::server::mirror::MIRRORS_DIR))? {
        let name = mirror
            .file_name()
            .map(|n| format!("mirror {}", n.to_string_lossy()))
            .unwrap_or_default();
        stores.push((name, mirror));
    }
    let mut text = String::new();
    let mut failed = None;
    for (name, path) in stores {
        match audit::compact(&path) {
            Ok((before, after)) => {
                let line = format!(
                    "{name} compacted: {before} bytes before, {after} after ({:.0} %)",
                    after as f64 * 100.0 / before.max(1) as f64
                );
                text.push_str(&line);
                text.push('\n');
            }
            Err(e) => {
                tracing::error!(store = %path.display(), error = %e, "{name} not compacted");
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        None => Ok(Report {
            text,
            ..Report::default()
        }),
        Some(e) => Err(e.into()),
    }
}

/// The mirror stores in `dir`, each once: a folder `compact` left beside
/// one (`X.compacting`, `X.before-compact`) names the store `X`; a folder
/// that is not a sled store (no `conf`) and names none is left alone.
fn mirror_stores(dir: &Path) -> Result<Vec<std::path::PathBuf>, CliError> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.map_err(audit::StoreError::Io)?,
    };
    let mut stores = std::collections::BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(audit::StoreError::Io)?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        match audit::compaction_leftover_of(&name) {
            Some(store) => {
                stores.insert(dir.join(store));
            }
            None if path.join("conf").is_file() => {
                stores.insert(path);
            }
            None => {}
        }
    }
    Ok(stores.into_iter().collect())
}

/// `proofgate audit rotate-key`: replaces the checkpoint key of `data_dir`'s
/// log; the change is logged and signed by the old key.
pub async fn rotate_key(data_dir: &Path, node_id: &str) -> Result<Report, CliError> {
    let vkey = security::rotate_log_key(data_dir, node_id).await?;
    Ok(Report::line(format_args!("new checkpoint key: {vkey}")))
}

/// `proofgate stats`: the reform's figures from `data_dir`'s log, as a table
/// or as JSON, as of the system clock (China Standard Time for dates).
pub fn stats(data_dir: &Path, json: bool) -> Result<Report, CliError> {
    let figures = audit::data_dir_records(data_dir)
        .and_then(|records| stats::statistics(records, system_now_unix_ms()))?;
    let text = if json {
        format!("{}\n", stats::to_json(&figures))
    } else {
        stats::to_table(&figures)
    };
    Ok(Report {
        text,
        ..Report::default()
    })
}

/// Witness vkeys given on the command line (text, or files holding them).
fn witness_keys(given: &[String]) -> Result<Vec<audit::NoteVerifier>, CliError> {
    given
        .iter()
        .map(|given| {
            let vkey = crate::server::cosign::read_vkey(given);
            audit::NoteVerifier::from_cosigner_vkey(&vkey).map_err(|e| CliError::WitnessKey {
                vkey: given.clone(),
                problem: e.to_string(),
            })
        })
        .collect()
}

/// The log a `verify` or `replay` reads. The outer error: no source given;
/// the inner: the source cannot be opened (bad data to an auditor).
fn open_records(source: &LogSource) -> Result<Result<Records, audit::RecordError>, CliError> {
    match (&source.data_dir, &source.file) {
        (Some(dir), _) => Ok(audit::data_dir_records(dir)),
        (None, Some(file)) => Ok(audit::file_records(file)),
        (None, None) => Err(CliError::NoLogSource),
    }
}

/// Progress on standard error, with the rate so far.
fn progress(what: &'static str) -> impl FnMut(u64) {
    let started = Instant::now();
    move |n| {
        eprintln!(
            "{what}: {n} entries ({:.0}/s)",
            n as f64 / started.elapsed().as_secs_f64().max(1e-9)
        )
    }
}

/// The identity `audit restore` calls the mirror as.
pub const RESTORE_IDENTITY: &str = "auditor.auditor.proofgate";

/// A failed pull: the mirror unreachable or refusing (69), or what it
/// served does not verify (65).
pub fn pull_exit_code(e: &crate::server::mirror::PullError) -> u8 {
    use crate::server::mirror::PullError;
    match e {
        PullError::Connect { .. } | PullError::Timeout { .. } => crate::server::exit::UNAVAILABLE,
        PullError::Rpc { status, .. } => match status.code() {
            tonic::Code::NotFound | tonic::Code::InvalidArgument => crate::server::exit::CONFIG,
            tonic::Code::DataLoss => crate::server::exit::DATA,
            _ => crate::server::exit::UNAVAILABLE,
        },
        PullError::Mirror(_) | PullError::BadAnswer { .. } => crate::server::exit::DATA,
    }
}

/// `proofgate audit restore`: rebuilds `data_dir` (which must be empty)
/// from the log of `origin` served at `from` (a mirror, by origin), as the
/// certs folder's auditor. Every chunk of entries is checked against the
/// newest checkpoint (its signature by the origin's key; the chunk's root a
/// prefix of its tree) before it is written, into `log.restoring`, renamed
/// to `log` once complete; then the projections are rebuilt from the
/// entries and the whole folder is verified as `audit verify` does.
pub async fn restore(args: &RestoreArgs) -> Result<Report, CliError> {
    let data_dir = args.data_dir.as_path();
    if std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(CliError::RestoreConfig(format!(
            "{} is not empty: restore only into an empty or new folder (move the old one away first)",
            data_dir.display()
        )));
    }
    // Witness keys are checked before anything is pulled; the quorum on
    // what was pulled, before the restored folder is put in place.
    witness_keys(&args.witnesses)?;
    if args.quorum.is_some_and(|k| k > 0) && args.witnesses.is_empty() {
        return Err(CliError::RestoreConfig(
            "--quorum needs the witnesses' keys: give --witness VKEY (repeatable)".into(),
        ));
    }
    let files = security::TlsFiles::load(&args.certs, RESTORE_IDENTITY)?;
    let channel = security::connect(&args.from, Some(&files), security::GATEWAY_IDENTITY)
        .await
        .map_err(|e| crate::server::mirror::PullError::Connect {
            url: args.from.clone(),
            problem: format!("{e} (is a node serving there?)"),
        })?;
    let mut client = crate::server::mirror::client_over(channel, RESTORE_IDENTITY);
    let mut warnings = Vec::new();
    let vkey = match &args.vkey {
        Some(v) => std::fs::read_to_string(v)
            .unwrap_or_else(|_| v.clone())
            .trim()
            .to_owned(),
        None => {
            let served =
                crate::server::mirror::peer_checkpoint(&mut client, &args.from, &args.origin)
                    .await?;
            warnings.push(format!(
                "no --vkey: trusted the key the mirror serves for {}: {} (check it against the node's log.vkey)",
                args.origin, served.verifier_key
            ));
            served.verifier_key
        }
    };
    std::fs::create_dir_all(data_dir).map_err(|e| CliError::Generate {
        dir: data_dir.to_path_buf(),
        source: e,
    })?;
    let staging = data_dir.join("log.restoring");
    let restored = restore_into(args, &mut client, &vkey, &staging, warnings).await;
    if restored.is_err() {
        // Nothing half-restored is left behind: the folder is empty again,
        // so the restore can simply be run again.
        if let Ok(entries) = std::fs::read_dir(data_dir) {
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
    }
    restored
}

async fn restore_into(
    args: &RestoreArgs,
    client: &mut crate::server::mirror::AuditClient,
    vkey: &str,
    staging: &Path,
    mut warnings: Vec<String>,
) -> Result<Report, CliError> {
    let data_dir = args.data_dir.as_path();
    let vkey = vkey.to_owned();
    let log = audit::MirrorLog::open(staging, &args.origin, &vkey)
        .map_err(|e| CliError::RestoreConfig(e.to_string()))?;
    let size = crate::server::mirror::pull(client, &args.from, &args.origin, &log).await?;
    if size == 0 {
        return Err(CliError::Restored(format!(
            "{} serves no checkpoint of {}",
            args.from, args.origin
        )));
    }
    let store = log.into_log_store()?;
    if let Some(quorum) = args.quorum.filter(|k| *k > 0) {
        let witnesses = witness_keys(&args.witnesses)?;
        let newest = store
            .latest_checkpoint()?
            .map(|(_, note)| note)
            .unwrap_or_default();
        let (valid, problems) = audit::count_cosignatures(&newest, &witnesses);
        if valid < quorum {
            return Err(CliError::Restored(format!(
                "the newest checkpoint {} serves for {} (size {size}) carries valid cosignatures by {valid} of the {} given witness(es); {quorum} required (--quorum){}",
                args.from,
                args.origin,
                witnesses.len(),
                problems
                    .iter()
                    .map(|p| format!("; {p}"))
                    .collect::<String>()
            )));
        }
    }
    let rebuilt = audit::restore_projections(&store)?;
    drop(store);
    let final_path = data_dir.join("log");
    // The store's file lock goes with its last handle: reopen-and-drop
    // waits for it, so the rename never moves a store still held.
    drop(audit::AuditStore::open(staging)?);
    std::fs::rename(staging, &final_path).map_err(|e| CliError::Generate {
        dir: final_path.clone(),
        source: e,
    })?;
    // The keys a verifier needs: the first one, and after rotations all.
    let keys = restored_keys(&final_path, &vkey)?;
    let write = |name: &str, text: String| {
        let path = data_dir.join(name);
        std::fs::write(&path, text).map_err(|e| CliError::Generate {
            dir: path,
            source: e,
        })
    };
    if let [only] = keys.as_slice() {
        write("log.vkey", format!("{only}\n"))?;
    } else {
        write("log.vkeys", keys.iter().map(|k| format!("{k}\n")).collect())?;
        write(
            "log.vkey",
            format!("{}\n", keys.last().map_or("", |k| k.as_str())),
        )?;
    }
    let first = keys.first().cloned().unwrap_or(vkey.clone());
    let verified = audit::data_dir_records(data_dir)
        .and_then(|records| audit::verify_records(records, Some(&first), |_| {}))
        .map_err(CliError::Check)?;
    if !verified.ok() {
        return Err(CliError::Restored(format!(
            "the restored log does not verify: {}",
            verified.problem.map(|p| p.to_string()).unwrap_or_default()
        )));
    }
    if !rebuilt.consistent() {
        warnings.push(format!(
            "projections rebuilt with {} entries refused by the projection (run `proofgate audit rebuild --data-dir {}` and `audit replay`)",
            rebuilt.refused.len(),
            data_dir.display()
        ));
    }
    let applications = rebuilt
        .kinds
        .iter()
        .find(|k| k.kind == "applications")
        .map_or(0, |k| k.expected);
    Ok(Report {
        text: format!(
            "restored {size} entries of {} from {} into {} (verified: signature by {}, every entry against the newest checkpoint); {applications} applications and the other projections rebuilt from the entries.\n\
             To resume appending to this log, copy the node's keys (keys/log-signing-key.pk8 and keys/pseudonym.key) into {}/keys before `proofgate serve`. Without its key the node must start a new log in an empty data folder (see README, Mirrors and restore).\n",
            args.origin,
            args.from,
            data_dir.display(),
            first,
            data_dir.display()
        ),
        warnings,
        found_problem: false,
    })
}

/// The verifier keys of a restored log, oldest first: `newest` alone, or the
/// chain its KeyRotated entries give (the first rotation's previous key,
/// then each new one).
pub(super) fn restored_keys(log: &Path, newest: &str) -> Result<Vec<String>, CliError> {
    use prost::Message;
    let store = audit::AuditStore::open(log)?;
    let mut keys: Vec<String> = Vec::new();
    for item in store.entries(0, u64::MAX) {
        let (_, bytes) = item?;
        if let Ok(crate::pb::AuditEntry {
            event: Some(crate::pb::audit_entry::Event::KeyRotated(r)),
            ..
        }) = crate::pb::AuditEntry::decode(&bytes[..])
        {
            if keys.is_empty() {
                keys.push(r.previous_verifier_key.clone());
            }
            keys.push(r.new_verifier_key.clone());
        }
    }
    if keys.is_empty() {
        keys.push(newest.to_owned());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store at `path` holding `keys` keys, written raw.
    fn store_with(path: &Path, keys: u32) {
        let db = audit::sled_config(path, audit::StoreOptions::default())
            .open()
            .unwrap();
        for k in 0..keys {
            db.insert(format!("t{k:06}"), vec![7u8; 300]).unwrap();
        }
        db.flush().unwrap();
    }

    fn keys_of(path: &Path) -> usize {
        let db = audit::sled_config(path, audit::StoreOptions::default())
            .open()
            .unwrap();
        db.scan_prefix(b"t").count()
    }

    #[test]
    fn compact_gives_back_the_mirrors_disk_too() {
        let dir = tempfile::tempdir().unwrap();
        let mirrors = dir.path().join(crate::server::mirror::MIRRORS_DIR);
        store_with(&dir.path().join("log"), 50);
        store_with(&mirrors.join("node-2"), 400);
        store_with(&mirrors.join("node-3"), 10);
        let report = compact(dir.path()).unwrap();
        assert!(report.text.starts_with("log compacted"), "{}", report.text);
        for name in ["node-2", "node-3"] {
            assert!(
                report.text.contains(&format!("mirror {name} compacted")),
                "{}",
                report.text
            );
        }
        assert_eq!(keys_of(&dir.path().join("log")), 50);
        assert_eq!(keys_of(&mirrors.join("node-2")), 400);
        assert_eq!(keys_of(&mirrors.join("node-3")), 10);
    }

    #[test]
    fn a_store_that_fails_does_not_keep_the_others_from_compacting() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mirror = dir
            .path()
            .join(crate::server::mirror::MIRRORS_DIR)
            .join("node-2");
        store_with(&mirror, 100);
        let inode = || std::fs::metadata(mirror.join("db")).unwrap().ino();
        let before = inode();
        // No `log`: the log's compaction fails, and is the command's error.
        let refused = compact(dir.path()).unwrap_err();
        assert!(refused.to_string().contains("no audit store"), "{refused}");
        assert_ne!(inode(), before, "the mirror was compacted all the same");
        assert_eq!(keys_of(&mirror), 100);
    }

    #[test]
    fn a_folder_compact_left_names_its_store_once() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "a.compacting", "b.before-compact", "c", "not-a-store"] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
        }
        for store in ["a", "c"] {
            std::fs::write(dir.path().join(store).join("conf"), b"").unwrap();
        }
        std::fs::write(dir.path().join("stray-file"), b"").unwrap();
        let names: Vec<_> = mirror_stores(dir.path())
            .unwrap()
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(mirror_stores(&dir.path().join("none")).unwrap().is_empty());
    }
}
