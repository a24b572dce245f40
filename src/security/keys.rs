//! The node's secrets on disk: the Ed25519 key that signs checkpoints and the
//! HMAC key of subject pseudonyms. Generated on first start, owner-only
//! permissions, never logged.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::Ed25519KeyPair;
use thiserror::Error;

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
    #[error("{0} already exists; refusing to overwrite a key (it would orphan the log)")]
    Exists(PathBuf),
    #[error("system random generator failed")]
    Random,
}

pub struct NodeKeys {
    pub signing: Ed25519KeyPair,
    pub pseudonym: PseudonymKey,
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

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
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
