//! The node's secrets on disk: the Ed25519 key that signs checkpoints and the
//! HMAC key of subject pseudonyms. Generated on first start, owner-only
//! permissions (files created 0600, never chmod-ed after writing), never
//! logged. Also opening the node's log with its key, and rotating that key.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::Ed25519KeyPair;
use thiserror::Error;

use crate::audit::WriterOptions;
use crate::audit::{AuditError, AuditLog, AuditStore, CheckpointError, NoteSigner, StoreError};
use crate::pb;
use crate::subject::{PseudonymKey, PSEUDONYM_KEY_LEN};

const SIGNING_KEY_FILE: &str = "log-signing-key.pk8";
const PSEUDONYM_KEY_FILE: &str = "pseudonym.key";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a valid Ed25519 PKCS#8 key")]
    BadSigningKey(PathBuf),
    #[error("{0}: pseudonym key must be exactly {PSEUDONYM_KEY_LEN} bytes")]
    BadPseudonymKey(PathBuf),
    #[error("{0} already exists; refusing to overwrite an existing key (move it away first if you mean to replace it)")]
    Exists(PathBuf),
    #[error("system random generator failed")]
    Random,
}

pub struct NodeKeys {
    pub signing: Ed25519KeyPair,
    pub pseudonym: PseudonymKey,
}

/// Opening the node's log, or rotating its key, failed.
#[derive(Debug, Error)]
pub enum LogKeyError {
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no key to rotate (has this node ever started?)")]
    NoKey(PathBuf),
    /// The log's checkpoints are signed by another key (or origin) than the
    /// node's: appending would fork it or mix two logs.
    #[error("{log}: its newest checkpoint (size {size}) is not signed by this node's key {vkey}: the log was restored without its key, the keys were replaced, or --node-id changed. Copy the node's keys/ back (and give its --node-id), or start a new log in an empty data folder (README: Mirrors and restore)")]
    ForeignLog {
        log: PathBuf,
        size: u64,
        vkey: String,
    },
}

/// The origin line of a node's checkpoints.
pub fn log_origin(node_id: &str) -> String {
    format!("{LOG_ORIGIN_PREFIX}{node_id}")
}

/// What a node's log origin starts with; its node id follows.
pub const LOG_ORIGIN_PREFIX: &str = "proofgate/";

/// Opens (or creates) the node's log in `data_dir` with its keys and starts
/// its writer; writes `log.vkey` for verifiers.
pub fn open_log(
    data_dir: &Path,
    node_id: &str,
    writer: WriterOptions,
) -> Result<(AuditLog, PseudonymKey), LogKeyError> {
    let keys = load_or_generate_keys(&data_dir.join("keys"))?;
    let store = AuditStore::open_with(&data_dir.join("log"), writer.store)?;
    // A store written before issue 12 keeps a copy of each application
    // beside its entries: converted once, here, to lists of entries.
    let converted = crate::audit::migrate_projections(&store)?;
    if converted > 0 {
        tracing::info!(
            applications = converted,
            "application projections converted to lists of entries"
        );
    }
    let signer = NoteSigner::new(&log_origin(node_id), keys.signing)?;
    check_signed_by(&store, &signer.verifier_key(), &data_dir.join("log"))?;
    let log = AuditLog::start(store, signer, node_id.to_owned(), writer)?;
    let vkey_path = data_dir.join("log.vkey");
    fs::write(&vkey_path, format!("{}\n", log.verifier_key())).map_err(|source| {
        LogKeyError::Write {
            path: vkey_path,
            source,
        }
    })?;
    Ok((log, keys.pseudonym))
}

/// A log may be appended to with `vkey` only if its newest checkpoint is
/// signed by it, or its last entry rotated the key to it (the checkpoint
/// covering a rotation is still the old key's).
fn check_signed_by(store: &AuditStore, vkey: &str, path: &Path) -> Result<(), LogKeyError> {
    let Some((size, note)) = store.latest_checkpoint()? else {
        return Ok(());
    };
    let verifier = crate::audit::NoteVerifier::from_vkey(vkey)?;
    if verifier.verify_signature(&note).is_ok() {
        return Ok(());
    }
    let rotated_to_us = size > 0
        && store
            .entry(size - 1)?
            .and_then(|bytes| {
                use prost::Message;
                pb::AuditEntry::decode(&bytes[..]).ok()
            })
            .is_some_and(|entry| {
                matches!(entry.event, Some(pb::audit_entry::Event::KeyRotated(r)) if r.new_verifier_key == vkey)
            });
    if rotated_to_us {
        return Ok(());
    }
    Err(LogKeyError::ForeignLog {
        log: path.to_path_buf(),
        size,
        vkey: vkey.to_owned(),
    })
}

/// Rotates the node's checkpoint key, offline (no server on this data folder):
/// appends a KeyRotated entry signed by the current key — alone in its batch,
/// so the checkpoint covering it is still the old key's — then makes the new
/// key current (its file created 0600). `log.vkeys` keeps every key, oldest
/// first, for verifiers. Returns the new verifier key.
pub async fn rotate_log_key(data_dir: &Path, node_id: &str) -> Result<String, LogKeyError> {
    let keys_dir = data_dir.join("keys");
    let current = keys_dir.join(SIGNING_KEY_FILE);
    if !current.exists() {
        return Err(LogKeyError::NoKey(current));
    }
    let (log, _) = open_log(data_dir, node_id, WriterOptions::default())?;
    let previous = log.verifier_key().to_owned();
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
    let new_pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Random)?;
    let new_signer = NoteSigner::new(&log_origin(node_id), new_pair)?;
    let new_vkey = new_signer.verifier_key();
    let old_pair = load_or_generate_keys(&keys_dir)?.signing;
    let old_signer = NoteSigner::new(&log_origin(node_id), old_pair)?;
    let signature = old_signer.sign(&crate::audit::rotation_message(&new_vkey));
    log.append(
        pb::audit_entry::Event::KeyRotated(pb::KeyRotated {
            previous_verifier_key: previous.clone(),
            new_verifier_key: new_vkey.clone(),
            signature,
        }),
        Vec::new(),
    )
    .await?;
    log.stop().await;
    drop(log);
    let write = |path: PathBuf, bytes: &[u8]| {
        fs::write(&path, bytes).map_err(|source| LogKeyError::Write { path, source })
    };
    let retired = keys_dir.join(format!(
        "retired-{}.pk8",
        crate::clock::system_now_unix_ms()
    ));
    fs::rename(&current, &retired).map_err(|source| LogKeyError::Write {
        path: retired.clone(),
        source,
    })?;
    write_secret(&current, pkcs8.as_ref())?;
    let history = data_dir.join("log.vkeys");
    let mut keys = fs::read_to_string(&history).unwrap_or_else(|_| format!("{previous}\n"));
    keys.push_str(&new_vkey);
    keys.push('\n');
    write(history, keys.as_bytes())?;
    write(
        data_dir.join("log.vkey"),
        format!("{new_vkey}\n").as_bytes(),
    )?;
    tracing::info!(%new_vkey, "checkpoint key rotated");
    Ok(new_vkey)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates both keys in `dir`; refuses to overwrite existing ones.
pub fn generate_keys(dir: &Path) -> Result<(), KeyError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    restrict_dir(dir)?;
    let rng = SystemRandom::new();
    let signing = dir.join(SIGNING_KEY_FILE);
    let pseudonym = dir.join(PSEUDONYM_KEY_FILE);
    for path in [&signing, &pseudonym] {
        if path.exists() {
            return Err(KeyError::Exists(path.clone()));
        }
    }
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
    write_secret(&signing, pkcs8.as_ref())?;
    let mut secret = [0u8; PSEUDONYM_KEY_LEN];
    rng.fill(&mut secret).map_err(|_| KeyError::Random)?;
    write_secret(&pseudonym, &secret)?;
    Ok(())
}

/// An Ed25519 key pair kept in one PKCS#8 file (a witness's key): loaded,
/// or generated and written owner-only (0600) on first use. The flag says
/// whether it was generated now.
pub fn load_or_generate_key_file(path: &Path) -> Result<(Ed25519KeyPair, bool), KeyError> {
    let created = !path.exists();
    if created {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
        write_secret(path, pkcs8.as_ref())?;
    }
    let pkcs8 = fs::read(path).map_err(io(path))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| KeyError::BadSigningKey(path.to_path_buf()))?;
    Ok((pair, created))
}

/// Writes `DATA_DIR/log.vkey`, the verifier key of the node's log, from the
/// signing key in `DATA_DIR/keys` (`keygen` and `serve` both do), so a
/// witness can be told about a log before it first starts.
pub fn write_log_vkey(data_dir: &Path, node_id: &str) -> Result<String, LogKeyError> {
    let keys = load_or_generate_keys(&data_dir.join("keys"))?;
    let vkey = NoteSigner::new(&log_origin(node_id), keys.signing)?.verifier_key();
    let path = data_dir.join("log.vkey");
    fs::write(&path, format!("{vkey}\n")).map_err(|source| LogKeyError::Write { path, source })?;
    Ok(vkey)
}

/// Loads the keys from `dir`, generating them on first start.
pub fn load_or_generate_keys(dir: &Path) -> Result<NodeKeys, KeyError> {
    let signing_path = dir.join(SIGNING_KEY_FILE);
    let pseudonym_path = dir.join(PSEUDONYM_KEY_FILE);
    if !signing_path.exists() && !pseudonym_path.exists() {
        generate_keys(dir)?;
    }
    let pkcs8 = fs::read(&signing_path).map_err(io(&signing_path))?;
    let signing = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| KeyError::BadSigningKey(signing_path.clone()))?;
    let secret = fs::read(&pseudonym_path).map_err(io(&pseudonym_path))?;
    let secret: [u8; PSEUDONYM_KEY_LEN] = secret
        .try_into()
        .map_err(|_| KeyError::BadPseudonymKey(pseudonym_path.clone()))?;
    Ok(NodeKeys {
        signing,
        pseudonym: PseudonymKey::new(&secret),
    })
}

pub(super) fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn restrict_dir(dir: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_generated_once_owner_only_and_reloaded_identically() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let first = load_or_generate_keys(&keys_dir).unwrap();
        let second = load_or_generate_keys(&keys_dir).unwrap();
        use ring::signature::KeyPair;
        assert_eq!(
            first.signing.public_key().as_ref(),
            second.signing.public_key().as_ref()
        );
        assert!(matches!(generate_keys(&keys_dir), Err(KeyError::Exists(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(keys_dir.join(SIGNING_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "signing key readable by others");
        }
    }

    #[tokio::test]
    async fn a_rotated_key_is_created_owner_only_and_becomes_current() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_log(dir.path(), "node-1", WriterOptions::default()).unwrap();
        let before = log.verifier_key().to_owned();
        log.stop().await;
        drop(log);
        let after = rotate_log_key(dir.path(), "node-1").await.unwrap();
        assert_ne!(before, after);
        let vkeys = fs::read_to_string(dir.path().join("log.vkeys")).unwrap();
        assert_eq!(vkeys, format!("{before}\n{after}\n"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("keys").join(SIGNING_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "new signing key readable by others");
        }
    }

    #[test]
    fn a_truncated_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        generate_keys(dir.path()).unwrap();
        fs::write(dir.path().join(PSEUDONYM_KEY_FILE), b"short").unwrap();
        assert!(matches!(
            load_or_generate_keys(dir.path()),
            Err(KeyError::BadPseudonymKey(_))
        ));
    }
}
