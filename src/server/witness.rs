//! `proofgate witness`: the C2SP tlog-witness of [`crate::audit::witness`]
//! over HTTP (axum, the listener of [`super::http`]): `POST /add-checkpoint`
//! with the spec's bodies, status codes and content types. Its key is
//! generated on first start (`DATA_DIR/witness-key.pk8`, 0600), its vkey
//! written to `DATA_DIR/witness.vkey`, its state kept in sled in
//! `DATA_DIR/state`. Plain HTTP only on loopback; TLS with a certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::http;
use crate::audit::witness::{Refusal, Witness, WitnessError, MAX_REQUEST_BYTES, SIZE_CONTENT_TYPE};
use crate::audit::{CheckpointError, NoteSigner};
use crate::clock::SharedClock;
use crate::security::tls::{https_server_config, TlsError};
use crate::security::{load_or_generate_key_file, KeyError};

/// The witness's name in its vkey and cosignature lines unless `--name`.
pub const DEFAULT_WITNESS_NAME: &str = "proofgate-witness";
const KEY_FILE: &str = "witness-key.pk8";
const VKEY_FILE: &str = "witness.vkey";
const STATE_DIR: &str = "state";

#[derive(Debug, Clone)]
pub struct WitnessOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub name: String,
    /// The vkeys of the logs it witnesses.
    pub logs: Vec<String>,
    /// Certificate and key (PEM) to serve HTTPS; None: plain HTTP, loopback only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The cosignatures' timestamps.
    pub clock: SharedClock,
}

#[derive(Debug, Error)]
pub enum WitnessStartError {
    #[error(transparent)]
    Witness(#[from] WitnessError),
    #[error("witness key: {0}")]
    Key(#[from] KeyError),
    #[error("--name: {0}")]
    Name(#[source] CheckpointError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(
        "plain HTTP is allowed only on a loopback address, not {0}: give --tls-cert and --tls-key"
    )]
    PlaintextOffLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl WitnessStartError {
    /// The exit code (see [`super::exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            WitnessStartError::Witness(WitnessError::InUse(_)) | WitnessStartError::Bind { .. } => {
                super::exit::UNAVAILABLE
            }
            WitnessStartError::Witness(WitnessError::LogKey { .. } | WitnessError::NoLogs)
            | WitnessStartError::Name(_)
            | WitnessStartError::Tls(_)
            | WitnessStartError::PlaintextOffLoopback(_) => super::exit::CONFIG,
            _ => super::exit::FAILURE,
        }
    }
}

/// A witness serving.
pub struct RunningWitness {
    pub addr: SocketAddr,
    /// Its vkey (`name+id+base64(0x04 || key)`).
    pub vkey: String,
    /// `http://addr` or `https://addr`.
    pub url: String,
    task: JoinHandle<()>,
}

impl RunningWitness {
    /// Stops serving (connections in progress are dropped).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The witness's routes: `POST /add-checkpoint`.
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(witness)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "not found: this is a C2SP tlog-witness; POST /add-checkpoint\n",
            )
        })
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: Bytes) -> Response {
    let answered =
        tokio::task::spawn_blocking(move || witness.cosign(&body).map_err(|e| (e, body))).await;
    let text = |status: StatusCode, body: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    };
    match answered {
        Ok(Ok(cosigned)) => {
            info!(origin = %cosigned.origin, size = cosigned.size, "checkpoint cosigned");
            text(StatusCode::OK, cosigned.line)
        }
        Ok(Err((refusal, body))) => {
            let origin = String::from_utf8_lossy(&body)
                .split_once("\n\n")
                .and_then(|(_, note)| note.lines().next().map(str::to_owned))
                .unwrap_or_default();
            warn!(status = refusal.status(), %origin, reason = %refusal, "checkpoint not cosigned");
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match refusal {
                Refusal::Conflict { latest, .. } => (
                    status,
                    [(header::CONTENT_TYPE, SIZE_CONTENT_TYPE)],
                    format!("{latest}\n"),
                )
                    .into_response(),
                other => text(status, format!("{other}\n")),
            }
        }
        Err(e) => {
            warn!(error = %e, "witness task failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; nothing was cosigned\n".into(),
            )
        }
    }
}

/// Starts a witness: key (generated on first start), vkey file, state, listener.
pub async fn start(options: WitnessOptions) -> Result<RunningWitness, WitnessStartError> {
    if options.tls.is_none() && !options.listen.ip().is_loopback() {
        return Err(WitnessStartError::PlaintextOffLoopback(options.listen));
    }
    let acceptor = match &options.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(https_server_config(
            cert, key,
        )?)),
        None => None,
    };
    let write_error = |path: PathBuf| {
        move |source| WitnessStartError::Write {
            path: path.clone(),
            source,
        }
    };
    std::fs::create_dir_all(&options.data_dir).map_err(write_error(options.data_dir.clone()))?;
    let (pair, created) = load_or_generate_key_file(&options.data_dir.join(KEY_FILE))?;
    if created {
        info!(dir = %options.data_dir.display(), "witness key generated");
    }
    let signer = NoteSigner::cosigner(&options.name, pair).map_err(WitnessStartError::Name)?;
    let witness = Witness::open(
        &options.data_dir.join(STATE_DIR),
        signer,
        &options.logs,
        options.clock.clone(),
    )?;
    let vkey = witness.verifier_key();
    let vkey_path = options.data_dir.join(VKEY_FILE);
    std::fs::write(&vkey_path, format!("{vkey}\n")).map_err(write_error(vkey_path.clone()))?;
    let listener = http::bind(options.listen)
        .await
        .map_err(|source| WitnessStartError::Bind {
            addr: options.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| WitnessStartError::Bind {
            addr: options.listen,
            source,
        })?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let task = tokio::spawn(http::serve_with(
        listener,
        router(Arc::new(witness)),
        acceptor,
    ));
    info!(%addr, %vkey, logs = options.logs.len(), "witness serving");
    Ok(RunningWitness {
        addr,
        vkey,
        url: format!("{scheme}://{addr}"),
        task,
    })
}
