//! The log asks witnesses (`serve --witness URL=VKEY`): one task per
//! witness submits the newest checkpoint with C2SP tlog-witness
//! `add-checkpoint`, at most once per [`SUBMIT_EVERY`], with the consistency
//! proof from the size that witness last cosigned (first time: 0, no
//! proof). A 409 is answered once by resending from the size the witness
//! states; a 422, or a 409 that does not resolve, is reported loudly as a
//! possible fork. Cosignatures are checked against the witness's vkey and
//! kept durably beside the checkpoints ([`crate::audit::AuditStore::add_cosignature`]);
//! `GetCheckpoint` returns them with the log's signature. Progress, lag and
//! refusals go to the metrics and the log.
//!
//! The HTTP client is hyper's (already in the tree); `https://` witnesses
//! are checked against the node's CA (`DATA_DIR/certs/ca.pem`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode, Uri};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::audit::witness::AddCheckpoint;
use crate::audit::{
    consistency_proof, note_signatures, split_note, AuditLog, CheckpointError, NoteVerifier,
};
use crate::metrics::Metrics;
use crate::security::tls::https_client_config;

/// At most one submission per witness this often.
pub const SUBMIT_EVERY: Duration = Duration::from_secs(1);
/// Longest one request to a witness may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A checkpoint a witness refused (403, 404, 422, an unresolved 409) is
/// offered again after this long, or as soon as a newer one exists.
pub const RETRY_REFUSED_EVERY: Duration = Duration::from_secs(60);
/// Largest response body read from a witness.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One witness: where it answers and its vkey (`serve --witness URL=VKEY`,
/// or `[[witness]]` with `url` and `vkey` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessTarget {
    pub url: String,
    pub vkey: String,
}

impl FromStr for WitnessTarget {
    type Err = String;
    /// `URL=VKEY`; VKEY is the vkey text or a file holding it.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (url, vkey) = text.split_once('=').ok_or_else(|| {
            format!("`{text}`: expected URL=VKEY (the witness's URL, then its vkey or a file holding it)")
        })?;
        Ok(Self {
            url: url.trim().to_owned(),
            vkey: read_vkey(vkey.trim()),
        })
    }
}

/// A vkey given as text or as a file holding it (its first non-empty line).
pub fn read_vkey(given: &str) -> String {
    match std::fs::read_to_string(given) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_owned(),
        Err(_) => given.trim().to_owned(),
    }
}

/// A witness target checked: URL and key usable.
struct Target {
    uri: Uri,
    https: bool,
    authority: String,
    host: String,
    port: u16,
    key: NoteVerifier,
}

impl WitnessTarget {
    fn check(&self) -> Result<Target, String> {
        let bad = |problem: &str| format!("--witness {}: {problem}", self.url);
        let key = NoteVerifier::from_cosigner_vkey(&self.vkey).map_err(|e| {
            format!(
                "--witness {}: the vkey `{}` is not a witness key: {e}",
                self.url, self.vkey
            )
        })?;
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e| bad(&format!("not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the URL must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| bad("the URL names no host"))?;
        Ok(Target {
            https,
            authority: authority.as_str().to_owned(),
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            uri: uri.clone(),
            key,
        })
    }
}

/// Checks the targets (at start: a bad one stops it); returns the key ids.
pub fn check_targets(targets: &[WitnessTarget]) -> Result<Vec<[u8; 4]>, String> {
    let mut ids = Vec::new();
    for target in targets {
        let id = target.check()?.key.key_id();
        if ids.contains(&id) {
            return Err(format!(
                "--witness {}: that witness key is given twice",
                target.url
            ));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Starts one task per witness; `certs_dir` holds the CA for https:// ones.
pub fn start(
    targets: &[WitnessTarget],
    log: &AuditLog,
    metrics: &Metrics,
    certs_dir: Option<&Path>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    for target in targets {
        let checked = target.check()?;
        let tls = if checked.https {
            let ca = certs_dir
                .map(|d| d.join("ca.pem"))
                .ok_or_else(|| format!("--witness {}: https:// needs the node's TLS (its CA checks the witness's certificate)", target.url))?;
            Some(tokio_rustls::TlsConnector::from(
                https_client_config(&ca).map_err(|e| format!("--witness {}: {e}", target.url))?,
            ))
        } else {
            None
        };
        let cosigner = Cosigner {
            label: checked.key.name().to_owned(),
            target: checked,
            tls,
            log: log.clone(),
            metrics: metrics.clone(),
            cosigned: None,
            refused: None,
            unreachable: false,
        };
        tasks.push(tokio::spawn(cosigner.run()));
    }
    Ok(tasks)
}

/// What a witness answered.
enum Answer {
    Cosigned(String),
    /// 409 with the witness's latest size.
    Conflict(u64),
    Refused(StatusCode, String),
}

struct Cosigner {
    target: Target,
    /// The witness's name, as the metrics' label.
    label: String,
    tls: Option<tokio_rustls::TlsConnector>,
    log: AuditLog,
    metrics: Metrics,
    /// Largest size this witness cosigned, as far as the node knows.
    cosigned: Option<u64>,
    /// The size last refused, and when: not offered again before
    /// [`RETRY_REFUSED_EVERY`] (the answer would be the same).
    refused: Option<(u64, tokio::time::Instant)>,
    /// Whether the last attempt could not reach the witness (logged once
    /// per outage, not every second).
    unreachable: bool,
}

impl Cosigner {
    async fn run(mut self) {
        let key_id = self.target.key.key_id();
        let store = self.log.store().clone();
        self.cosigned = tokio::task::spawn_blocking(move || store.witness_progress(key_id))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let mut every = tokio::time::interval(SUBMIT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let durable = self.log.durable_size();
            let store = self.log.store().clone();
            let newest = match tokio::task::spawn_blocking(move || {
                store.checkpoint_at_or_below(durable)
            })
            .await
            {
                Ok(Ok(Some(newest))) => newest,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => {
                    warn!(witness = %self.label, error = %e, "checkpoint not readable; witness not asked");
                    continue;
                }
                Err(_) => continue,
            };
            let (size, note) = newest;
            self.metrics
                .witness_progress(&self.label, self.cosigned.unwrap_or(0), size);
            if self.cosigned == Some(size) {
                continue;
            }
            if let Some((refused, at)) = self.refused {
                if refused == size && at.elapsed() < RETRY_REFUSED_EVERY {
                    continue;
                }
            }
            self.submit(size, &note).await;
            self.metrics
                .witness_progress(&self.label, self.cosigned.unwrap_or(0), size);
        }
    }

    /// Submits the checkpoint of `size`; on 409 once more from the size the
    /// witness states.
    async fn submit(&mut self, size: u64, note: &str) {
        let mut old = self.cosigned.unwrap_or(0).min(size);
        for attempt in 0..2 {
            let answer = match self.ask(old, size, note).await {
                Ok(answer) => answer,
                Err((status, problem)) if status != "unreachable" => {
                    self.metrics.witness_refusal(&self.label, status);
                    self.refused = Some((size, tokio::time::Instant::now()));
                    warn!(witness = %self.label, url = %self.target.uri, %problem, "no usable answer from the witness");
                    return;
                }
                Err((status, problem)) => {
                    self.metrics.witness_refusal(&self.label, status);
                    if !self.unreachable {
                        warn!(witness = %self.label, url = %self.target.uri, %problem, "witness not reached; its cosignatures will lag until it answers (retried every second)");
                    }
                    self.unreachable = true;
                    return;
                }
            };
            if std::mem::take(&mut self.unreachable) {
                info!(witness = %self.label, url = %self.target.uri, "witness reachable again");
            }
            match answer {
                Answer::Cosigned(body) => return self.keep(size, note, &body).await,
                Answer::Conflict(latest) => {
                    self.metrics.witness_refusal(&self.label, "409");
                    warn!(witness = %self.label, status = 409, sent_old_size = old, witness_size = latest, "witness refused the checkpoint of size {size}");
                    if latest > size {
                        self.refused = Some((size, tokio::time::Instant::now()));
                        return self.fork_alarm(format!(
                            "the witness has cosigned size {latest} of this log, which has only {size} entries: another history of this log was shown to it, or this node lost entries"
                        ));
                    }
                    if attempt == 1 {
                        self.refused = Some((size, tokio::time::Instant::now()));
                        return self.fork_alarm(format!(
                            "size conflict did not resolve: resent from size {old}, the witness again answered 409 (its latest size {latest}); it holds a checkpoint of that size with another root"
                        ));
                    }
                    info!(witness = %self.label, "resending from the witness's size {latest}");
                    old = latest;
                }
                Answer::Refused(status, reason) => {
                    self.metrics.witness_refusal(&self.label, status.as_str());
                    self.refused = Some((size, tokio::time::Instant::now()));
                    if status == StatusCode::UNPROCESSABLE_ENTITY {
                        return self.fork_alarm(format!(
                            "the witness refused the consistency proof from size {old} to {size} (422): what it cosigned before is not a prefix of this log"
                        ));
                    }
                    warn!(witness = %self.label, status = status.as_u16(), %reason, "witness refused the checkpoint");
                    return;
                }
            }
        }
    }

    fn fork_alarm(&self, problem: String) {
        self.metrics.witness_fork_alarm(&self.label);
        error!(
            witness = %self.label,
            url = %self.target.uri,
            "POSSIBLE FORK of this log: {problem}. Stop and investigate: compare this node's checkpoints with what the witness cosigned"
        );
    }

    /// Checks the cosignatures of the answer and keeps the valid ones.
    async fn keep(&mut self, size: u64, note: &str, body: &str) {
        let key = &self.target.key;
        let checked: Result<Vec<String>, CheckpointError> = (|| {
            let (text, _) = split_note(note)?;
            let lines = note_signatures(body)?;
            let mut valid = Vec::new();
            for line in lines.iter().filter(|s| key.is_signer_of(s)) {
                key.check(text, line)?;
                valid.push(line.line());
            }
            Ok(valid)
        })();
        let lines = match checked {
            Ok(lines) if !lines.is_empty() => lines,
            Ok(_) => {
                self.refused = Some((size, tokio::time::Instant::now()));
                self.metrics.witness_refusal(&self.label, "bad_response");
                warn!(witness = %self.label, "the witness answered 200 with no cosignature by its configured key (is its vkey right?)");
                return;
            }
            Err(e) => {
                self.refused = Some((size, tokio::time::Instant::now()));
                self.metrics.witness_refusal(&self.label, "bad_response");
                warn!(witness = %self.label, error = %e, "the witness's cosignature does not verify; not kept");
                return;
            }
        };
        let store = self.log.store().clone();
        let key_id = key.key_id();
        let stored = tokio::task::spawn_blocking(move || {
            lines
                .iter()
                .try_for_each(|line| store.add_cosignature(size, key_id, line))
        })
        .await;
        match stored {
            Ok(Ok(())) => {
                self.cosigned = Some(size);
                info!(witness = %self.label, size, "checkpoint cosigned");
            }
            Ok(Err(e)) => warn!(witness = %self.label, error = %e, "cosignature not stored"),
            Err(e) => warn!(witness = %self.label, error = %e, "cosignature not stored"),
        }
    }

    /// One `add-checkpoint` request: body from size `old` to `size`.
    async fn ask(&self, old: u64, size: u64, note: &str) -> Result<Answer, (&'static str, String)> {
        let store = self.log.store().clone();
        let proof = tokio::task::spawn_blocking(move || consistency_proof(&store, old, size))
            .await
            .map_err(|e| ("bad_response", e.to_string()))?
            .map_err(|e| ("bad_response", format!("consistency proof: {e}")))?;
        let body = AddCheckpoint {
            old_size: old,
            proof: if old == 0 { Vec::new() } else { proof },
            checkpoint: note.to_owned(),
        }
        .encode();
        tokio::time::timeout(REQUEST_TIMEOUT, self.post(body))
            .await
            .map_err(|_| {
                (
                    "unreachable",
                    format!("no answer within {REQUEST_TIMEOUT:?}"),
                )
            })?
    }

    async fn post(&self, body: String) -> Result<Answer, (&'static str, String)> {
        let unreachable = |e: &dyn std::fmt::Display| ("unreachable", e.to_string());
        let stream = tokio::net::TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|e| unreachable(&e))?;
        let _ = stream.set_nodelay(true);
        let path = format!(
            "{}/add-checkpoint",
            self.target.uri.path().trim_end_matches('/')
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, &self.target.authority)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from(body))
            .map_err(|e| unreachable(&e))?;
        let response = match &self.tls {
            None => send(hyper_util::rt::TokioIo::new(stream), request).await?,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.target.host.clone())
                    .map_err(|e| unreachable(&e))?;
                let stream = tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| unreachable(&e))?;
                send(hyper_util::rt::TokioIo::new(stream), request).await?
            }
        };
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| ("bad_response", e.to_string()))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match status {
            StatusCode::OK => Ok(Answer::Cosigned(text)),
            StatusCode::CONFLICT => {
                let latest = text
                    .strip_suffix('\n')
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|_| content_type.starts_with(crate::audit::witness::SIZE_CONTENT_TYPE))
                    .ok_or_else(|| {
                        (
                            "bad_response",
                            format!("409 without a text/x.tlog.size body (got `{content_type}`: {text:?})"),
                        )
                    })?;
                Ok(Answer::Conflict(latest))
            }
            other => Ok(Answer::Refused(other, text.trim().to_owned())),
        }
    }
}

/// Sends one request on a new HTTP/1.1 connection.
async fn send<IO>(
    io: IO,
    request: Request<Body>,
) -> Result<axum::http::Response<hyper::body::Incoming>, (&'static str, String)>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ("unreachable", e.to_string()))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ("unreachable", e.to_string()));
    drop(sender);
    if response.is_err() {
        driver.abort();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_url_equals_vkey_and_are_checked() {
        let pair = {
            let pkcs8 =
                ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .unwrap();
            ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
        };
        let vkey = crate::audit::NoteSigner::cosigner("w.example/1", pair)
            .unwrap()
            .verifier_key();
        let target: WitnessTarget = format!("http://127.0.0.1:9000={vkey}").parse().unwrap();
        assert_eq!(target.url, "http://127.0.0.1:9000");
        assert_eq!(target.vkey, vkey);
        assert_eq!(
            check_targets(std::slice::from_ref(&target)).unwrap().len(),
            1
        );
        let twice = check_targets(&[target.clone(), target.clone()]).unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
        assert!("no-equals-sign".parse::<WitnessTarget>().is_err());
        let ftp = WitnessTarget {
            url: "ftp://x".into(),
            vkey: vkey.clone(),
        };
        assert!(check_targets(&[ftp]).unwrap_err().contains("http://"));
        let log_key = WitnessTarget {
            url: "http://127.0.0.1:1".into(),
            vkey: "proofgate/n+00000000+AAAA".into(),
        };
        assert!(check_targets(&[log_key]).is_err());
    }
}
