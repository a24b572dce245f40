//! Signed policy sets: who may change the rules the gateway applies.
//!
//! A policy signer holds an Ed25519 key made by `proofgate policy keygen`;
//! its public half is a C2SP vkey (`name+keyid+base64`), the same form and
//! the same code as the log's checkpoint key ([`NoteSigner`],
//! [`NoteVerifier`]). `proofgate policy sign DIR --key KEY` writes
//! `DIR/policy.sig`, which names the signer and carries its signature over
//! the set's version — the SHA-256 digest of its canonical form, so the rules
//! are signed, not their layout or comments. The signature file is not part
//! of the set: only `*.toml` files are read as policy.
//!
//! ```text
//! proofgate policy signature v1
//! version sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! signer proofgate-policy+1a2b3c4d
//! signature <base64 of the 64-byte Ed25519 signature>
//! ```
//!
//! `serve --policy-key VKEY` builds a [`PolicyTrust`]: with any key
//! configured, every set — at start, at every reload, the compiled-in sample
//! catalog included — must carry a valid signature by one of them. There is
//! no setting that accepts an unsigned set next to a configured key (OPA's
//! GHSA-g2pf-6v5v-qcc8 was such a partial configuration), and a key file
//! that cannot be read is an error, never "no keys".

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use thiserror::Error;

use super::keys::{write_secret, KeyError};
use crate::audit::{CheckpointError, NoteSigner, NoteVerifier};
use crate::policy::{load_dir, PolicyErrors, PolicySet};

/// The signature file in a policy folder.
pub const SIGNATURE_FILE: &str = "policy.sig";
/// The private key `policy keygen` writes (Ed25519 PKCS#8, owner-only).
pub const KEY_FILE: &str = "policy-signing.key";
/// The public key `policy keygen` writes, for `serve --policy-key`.
pub const VKEY_FILE: &str = "policy-signing.vkey";
/// The signer name when none is given.
pub const DEFAULT_KEY_NAME: &str = "proofgate-policy";

const HEADER: &str = "proofgate policy signature v1";
/// Separates policy signatures from every other use of an Ed25519 key.
const DOMAIN: &[u8] = b"proofgate.v1.PolicySet\0";
/// A signature file is four short lines; anything longer is not one.
const MAX_SIGNATURE_FILE: u64 = 4096;
const ED25519_SIGNATURE_LEN: usize = 64;

/// What a policy signer signs: the domain and the set's version.
fn message(version: &str) -> Vec<u8> {
    [DOMAIN, version.as_bytes()].concat()
}

/// The parsed content of a `policy.sig` file (its signature not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFile {
    /// The set version the signer approved (`sha256:` and 64 hex digits).
    pub version: String,
    pub signer_name: String,
    pub key_id: [u8; 4],
    pub signature: Vec<u8>,
}

/// Why a signature file does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub problem: &'static str,
}

fn valid_version(version: &str) -> bool {
    version.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A key name as C2SP vkeys allow it: non-empty, no whitespace, no '+'.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

impl SignatureFile {
    /// `name+hex(key id)`, as the signer's vkey begins.
    pub fn signer(&self) -> String {
        format!("{}+{}", self.signer_name, hex::encode(self.key_id))
    }

    /// Parses the four lines of a signature file (a final newline optional);
    /// anything else — another header, a missing or extra line, a bad
    /// value — is refused with its line.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let lines: Vec<&str> = text.split('\n').collect();
        let field = |index: usize, key: &str, missing: &'static str| {
            let line = lines.get(index).ok_or(ParseError {
                line: index + 1,
                problem: missing,
            })?;
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or(ParseError {
                    line: index + 1,
                    problem: missing,
                })
        };
        if lines.first() != Some(&HEADER) {
            return Err(ParseError {
                line: 1,
                problem:
                    "not a proofgate policy signature (expected `proofgate policy signature v1`)",
            });
        }
        let version = field(1, "version", "expected `version sha256:<64 hex digits>`")?;
        if !valid_version(version) {
            return Err(ParseError {
                line: 2,
                problem: "the version must be `sha256:` and 64 lowercase hex digits",
            });
        }
        let signer = field(2, "signer", "expected `signer NAME+KEYID`")?;
        let (name, id) = signer.split_once('+').ok_or(ParseError {
            line: 3,
            problem: "the signer must be NAME+KEYID",
        })?;
        if !valid_name(name) {
            return Err(ParseError {
                line: 3,
                problem: "the signer name must be non-empty, without spaces or '+'",
            });
        }
        let key_id: [u8; 4] = hex::decode(id)
            .ok()
            .and_then(|id| id.try_into().ok())
            .ok_or(ParseError {
                line: 3,
                problem: "the key id must be 8 hex digits",
            })?;
        let signature = field(3, "signature", "expected `signature BASE64`")?;
        let signature = B64
            .decode(signature)
            .ok()
            .filter(|s| s.len() == ED25519_SIGNATURE_LEN)
            .ok_or(ParseError {
                line: 4,
                problem: "the signature must be 64 bytes of base64",
            })?;
        if lines.len() > 4 {
            return Err(ParseError {
                line: 5,
                problem: "unexpected line after the signature",
            });
        }
        Ok(Self {
            version: version.to_owned(),
            signer_name: name.to_owned(),
            key_id,
            signature,
        })
    }

    /// The file's text; [`SignatureFile::parse`] reads it back.
    pub fn render(&self) -> String {
        format!(
            "{HEADER}\nversion {}\nsigner {}\nsignature {}\n",
            self.version,
            self.signer(),
            B64.encode(&self.signature)
        )
    }
}

/// Who approved a loaded set: what goes into the log entry recording it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// `name+keyid` of the signing key.
    pub signer: String,
    /// The Ed25519 signature over the domain and the version, so anyone
    /// holding the vkey can check the approval from the log alone.
    pub signature: Vec<u8>,
}

/// A policy set refused for its signature; every message names the file.
#[derive(Debug, Error)]
pub enum SignatureError {
    #[error("{path}: no signature file: the policy set is unsigned and a policy key is configured, so a signature is required (sign it with `proofgate policy sign DIR --key KEY`)")]
    Unsigned { path: PathBuf },
    #[error("<built-in sample catalog>: unsigned, and a policy key is configured, so a signature is required; give --policies a signed folder")]
    BuiltInUnsigned,
    #[error("{path}: cannot read the signature file: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed signature file: {source}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error("{path}: signed by {signer}, which is not a configured policy key (configured: {configured})")]
    UnknownKey {
        path: PathBuf,
        signer: String,
        configured: String,
    },
    #[error("{path}: the policy set changed after signing: {signer} signed version {signed}, the files now give {actual}")]
    Changed {
        path: PathBuf,
        signer: String,
        signed: String,
        actual: String,
    },
    #[error("{path}: the signature by {signer} does not verify")]
    BadSignature { path: PathBuf, signer: String },
}

impl SignatureError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Unsigned { .. } | SignatureError::BuiltInUnsigned => "unsigned",
            SignatureError::Unreadable { .. } | SignatureError::Malformed { .. } => "malformed",
            SignatureError::UnknownKey { .. } => "unknown_key",
            SignatureError::Changed { .. } => "changed",
            SignatureError::BadSignature { .. } => "bad_signature",
        }
    }
}

/// A configured policy key that cannot be used: a start error (exit 64),
/// never a reason to run without the check.
#[derive(Debug, Error)]
pub enum PolicyKeyError {
    #[error("policy key {path}: cannot read: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy key {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: CheckpointError,
    },
}

/// The policy keys a node trusts. Empty: sets load unsigned (the node warns
/// once at start). Not empty: every set needs a valid signature by one.
#[derive(Debug, Clone, Default)]
pub struct PolicyTrust {
    keys: Vec<NoteVerifier>,
}

impl PolicyTrust {
    /// Reads each vkey file; any that cannot be read or parsed is an error.
    pub fn load(paths: &[PathBuf]) -> Result<Self, PolicyKeyError> {
        let mut keys = Vec::with_capacity(paths.len());
        for path in paths {
            let text = fs::read_to_string(path).map_err(|source| PolicyKeyError::Unreadable {
                path: path.clone(),
                source,
            })?;
            let key = NoteVerifier::from_vkey(&text).map_err(|source| PolicyKeyError::Invalid {
                path: path.clone(),
                source,
            })?;
            keys.push(key);
        }
        Ok(Self { keys })
    }

    /// Whether a signature is required (any key is configured).
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// `name+keyid` of every trusted key.
    pub fn signers(&self) -> Vec<String> {
        self.keys.iter().map(NoteVerifier::signer_id).collect()
    }

    /// Checks `set`, loaded from `dir` (None: the compiled-in catalog),
    /// against `dir/policy.sig`. Ok(None): no key configured, nothing
    /// checked. Ok(Some): signed by a trusted key over exactly this version.
    pub fn check(
        &self,
        dir: Option<&Path>,
        set: &PolicySet,
    ) -> Result<Option<Approval>, SignatureError> {
        if !self.required() {
            return Ok(None);
        }
        let dir = dir.ok_or(SignatureError::BuiltInUnsigned)?;
        let path = dir.join(SIGNATURE_FILE);
        let text = match read_bounded(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SignatureError::Unsigned { path })
            }
            Err(source) => return Err(SignatureError::Unreadable { path, source }),
        };
        let file = match SignatureFile::parse(&text) {
            Ok(file) => file,
            Err(source) => return Err(SignatureError::Malformed { path, source }),
        };
        let Some(key) = self
            .keys
            .iter()
            .find(|k| k.name() == file.signer_name && k.key_id() == file.key_id)
        else {
            return Err(SignatureError::UnknownKey {
                path,
                signer: file.signer(),
                configured: self.signers().join(", "),
            });
        };
        if file.version != set.version {
            return Err(SignatureError::Changed {
                path,
                signer: file.signer(),
                signed: file.version,
                actual: set.version.clone(),
            });
        }
        if !key.verify_bytes(&message(&set.version), &file.signature) {
            return Err(SignatureError::BadSignature {
                path,
                signer: file.signer(),
            });
        }
        Ok(Some(Approval {
            signer: file.signer(),
            signature: file.signature,
        }))
    }
}

/// Reads a signature file, refusing one larger than any signature file.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    fs::File::open(path)?
        .take(MAX_SIGNATURE_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SIGNATURE_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {MAX_SIGNATURE_FILE} bytes"),
        ));
    }
    Ok(text)
}

/// `policy keygen` or `policy sign` failed.
#[derive(Debug, Error)]
pub enum SigningToolError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("key name `{name}`: {source}")]
    Name {
        name: String,
        #[source]
        source: CheckpointError,
    },
    #[error("{vkey}: not the public half of {key}")]
    Mismatch { key: PathBuf, vkey: PathBuf },
    #[error("{path}: {source}")]
    Vkey {
        path: PathBuf,
        #[source]
        source: CheckpointError,
    },
    #[error("policy set refused:\n{0}")]
    Policy(#[from] PolicyErrors),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A key pair written by [`keygen`].
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub key_file: PathBuf,
    pub vkey_file: PathBuf,
    pub vkey: String,
}

/// Writes `out/policy-signing.key` (Ed25519 PKCS#8, created 0600) and
/// `out/policy-signing.vkey`; refuses to overwrite either.
pub fn keygen(out: &Path, name: &str) -> Result<GeneratedKey, SigningToolError> {
    let key_file = out.join(KEY_FILE);
    let vkey_file = out.join(VKEY_FILE);
    for path in [&key_file, &vkey_file] {
        if path.exists() {
            return Err(KeyError::Exists(path.clone()).into());
        }
    }
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Random)?;
    let signer = NoteSigner::new(name, pair).map_err(|source| SigningToolError::Name {
        name: name.to_owned(),
        source,
    })?;
    let vkey = signer.verifier_key();
    fs::create_dir_all(out).map_err(|source| SigningToolError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    write_secret(&key_file, pkcs8.as_ref())?;
    let write_vkey = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&vkey_file)?;
        file.write_all(format!("{vkey}\n").as_bytes())?;
        file.sync_all()
    };
    write_vkey().map_err(|source| SigningToolError::Write {
        path: vkey_file.clone(),
        source,
    })?;
    Ok(GeneratedKey {
        key_file,
        vkey_file,
        vkey,
    })
}

/// A signature written by [`sign_dir`].
#[derive(Debug, Clone)]
pub struct Signed {
    pub path: PathBuf,
    pub version: String,
    pub signer: String,
}

/// Loads the policy folder `dir` (it must be valid), signs its version with
/// `key_file` and writes `dir/policy.sig` (replaced whole, by rename).
///
/// The signer's name is `name` if given, else the name in the vkey beside
/// the key (`KEY` with the extension `.vkey`, as `keygen` writes it; it must
/// be the key's public half), else [`DEFAULT_KEY_NAME`].
pub fn sign_dir(
    dir: &Path,
    key_file: &Path,
    name: Option<&str>,
) -> Result<Signed, SigningToolError> {
    let pkcs8 = fs::read(key_file).map_err(|source| KeyError::Io {
        path: key_file.to_path_buf(),
        source,
    })?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| KeyError::BadSigningKey(key_file.to_path_buf()))?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => {
            let vkey_file = key_file.with_extension("vkey");
            match fs::read_to_string(&vkey_file) {
                Ok(text) => {
                    let beside = NoteVerifier::from_vkey(&text).map_err(|source| {
                        SigningToolError::Vkey {
                            path: vkey_file.clone(),
                            source,
                        }
                    })?;
                    if beside.public_key() != pair.public_key().as_ref() {
                        return Err(SigningToolError::Mismatch {
                            key: key_file.to_path_buf(),
                            vkey: vkey_file,
                        });
                    }
                    beside.name().to_owned()
                }
                Err(_) => DEFAULT_KEY_NAME.to_owned(),
            }
        }
    };
    let signer = NoteSigner::new(&name, pair).map_err(|source| SigningToolError::Name {
        name: name.clone(),
        source,
    })?;
    let verifier = NoteVerifier::from_vkey(&signer.verifier_key()).map_err(|source| {
        SigningToolError::Name {
            name: name.clone(),
            source,
        }
    })?;
    let set = load_dir(dir)?;
    let file = SignatureFile {
        version: set.version.clone(),
        signer_name: name,
        key_id: verifier.key_id(),
        signature: signer.sign(&message(&set.version)),
    };
    let path = dir.join(SIGNATURE_FILE);
    let staging = dir.join(format!("{SIGNATURE_FILE}.tmp"));
    let write = |target: &Path| -> std::io::Result<()> {
        fs::write(&staging, file.render())?;
        fs::rename(&staging, target)
    };
    write(&path).map_err(|source| SigningToolError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(Signed {
        path,
        version: set.version,
        signer: file.signer(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SignatureFile {
        SignatureFile {
            version: format!("sha256:{}", "ab".repeat(32)),
            signer_name: "alice".into(),
            key_id: [1, 2, 3, 4],
            signature: vec![7; 64],
        }
    }

    #[test]
    fn a_rendered_signature_file_parses_back() {
        let file = sample();
        let text = file.render();
        assert!(text.starts_with("proofgate policy signature v1\nversion sha256:abab"));
        assert!(text.contains("\nsigner alice+01020304\n"));
        assert_eq!(SignatureFile::parse(&text), Ok(file.clone()));
        assert_eq!(
            SignatureFile::parse(text.trim_end()),
            Ok(file),
            "final newline optional"
        );
    }

    #[test]
    fn malformed_signature_files_name_the_line() {
        let good = sample().render();
        let line_of = |text: &str| SignatureFile::parse(text).unwrap_err().line;
        assert_eq!(line_of(""), 1);
        assert_eq!(line_of(&good.replace("v1", "v2")), 1);
        assert_eq!(line_of(&good.replace("sha256:", "sha1:")), 2);
        assert_eq!(line_of(&good.replace("version ", "version  ")), 2);
        assert_eq!(line_of(&good.replace("+01020304", "+0102")), 3);
        assert_eq!(line_of(&good.replace("alice+", "+")), 3);
        assert_eq!(line_of(&good.replace("alice+", "al ice+")), 3);
        let short_signature = format!(
            "{}signature {}\n",
            good.rsplit_once("signature ").unwrap().0,
            B64.encode([7u8; 63])
        );
        assert_eq!(line_of(&short_signature), 4);
        let cut: String = good.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert_eq!(line_of(&cut), 4);
        assert_eq!(line_of(&format!("{good}extra\n")), 5);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in ".{0,300}") {
            let _ = SignatureFile::parse(&text);
        }

        #[test]
        fn parsing_never_panics_on_near_misses(
            cut in 0usize..200,
            insert in ".{0,8}",
        ) {
            let good = sample().render();
            let mut at = cut.min(good.len());
            while !good.is_char_boundary(at) {
                at -= 1;
            }
            let text = format!("{}{insert}{}", &good[..at], &good[at..]);
            let _ = SignatureFile::parse(&text);
        }

        #[test]
        fn any_signature_file_round_trips(
            name in "[a-zA-Z0-9/._-]{1,20}",
            id in any::<[u8; 4]>(),
            digest in any::<[u8; 32]>(),
            signature in proptest::collection::vec(any::<u8>(), 64),
        ) {
            let file = SignatureFile {
                version: format!("sha256:{}", hex::encode(digest)),
                signer_name: name,
                key_id: id,
                signature,
            };
            prop_assert_eq!(SignatureFile::parse(&file.render()), Ok(file));
        }
    }

    fn write_set(dir: &Path) {
        fs::write(
            dir.join("a.toml"),
            "[[proof]]\nid = \"waiver\"\nname = \"Waiver\"\nmode = \"abolished\"\nlegal_basis = \"test\"\n",
        )
        .unwrap();
    }

    #[test]
    fn a_signed_folder_checks_and_every_change_is_refused() {
        let keys = tempfile::tempdir().unwrap();
        let policies = tempfile::tempdir().unwrap();
        write_set(policies.path());
        let made = keygen(keys.path(), "alice").unwrap();
        let signed = sign_dir(policies.path(), &made.key_file, None).unwrap();
        assert!(signed.signer.starts_with("alice+"), "{}", signed.signer);
        let trust = PolicyTrust::load(std::slice::from_ref(&made.vkey_file)).unwrap();
        let set = load_dir(policies.path()).unwrap();
        let approval = trust.check(Some(policies.path()), &set).unwrap().unwrap();
        assert_eq!(approval.signer, signed.signer);
        assert!(PolicyTrust::default()
            .check(Some(policies.path()), &set)
            .unwrap()
            .is_none());
        assert_eq!(
            trust.check(None, &set).unwrap_err().reason(),
            "unsigned",
            "the compiled-in catalog is unsigned"
        );

        // The rules change after signing.
        fs::write(
            policies.path().join("a.toml"),
            "[[proof]]\nid = \"waiver\"\nname = \"Waiver!\"\nmode = \"abolished\"\nlegal_basis = \"test\"\n",
        )
        .unwrap();
        let changed = load_dir(policies.path()).unwrap();
        let err = trust.check(Some(policies.path()), &changed).unwrap_err();
        assert_eq!(err.reason(), "changed", "{err}");
        assert!(err.to_string().contains("policy.sig"), "{err}");

        // Someone rewrites the version line to match: the signature fails.
        let sig_path = policies.path().join(SIGNATURE_FILE);
        let text = fs::read_to_string(&sig_path).unwrap();
        fs::write(&sig_path, text.replace(&set.version, &changed.version)).unwrap();
        let err = trust.check(Some(policies.path()), &changed).unwrap_err();
        assert_eq!(err.reason(), "bad_signature", "{err}");

        // Another key, unknown to this node.
        let other = tempfile::tempdir().unwrap();
        let mallory = keygen(other.path(), "alice").unwrap();
        sign_dir(policies.path(), &mallory.key_file, None).unwrap();
        let err = trust.check(Some(policies.path()), &changed).unwrap_err();
        assert_eq!(err.reason(), "unknown_key", "{err}");

        fs::remove_file(&sig_path).unwrap();
        let err = trust.check(Some(policies.path()), &changed).unwrap_err();
        assert_eq!(err.reason(), "unsigned", "{err}");
        fs::write(&sig_path, "garbage").unwrap();
        let err = trust.check(Some(policies.path()), &changed).unwrap_err();
        assert_eq!(err.reason(), "malformed", "{err}");
    }

    #[test]
    fn keygen_makes_an_owner_only_key_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let made = keygen(dir.path(), DEFAULT_KEY_NAME).unwrap();
        let vkey = fs::read_to_string(&made.vkey_file).unwrap();
        assert_eq!(vkey.trim(), made.vkey);
        assert!(NoteVerifier::from_vkey(&vkey).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&made.key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "policy key readable by others");
        }
        assert!(matches!(
            keygen(dir.path(), DEFAULT_KEY_NAME),
            Err(SigningToolError::Key(KeyError::Exists(_)))
        ));
        assert!(matches!(
            keygen(tempfile::tempdir().unwrap().path(), "two words"),
            Err(SigningToolError::Name { .. })
        ));
    }

    #[test]
    fn unusable_key_files_are_errors_not_an_empty_trust() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            PolicyTrust::load(&[dir.path().join("missing.vkey")]),
            Err(PolicyKeyError::Unreadable { .. })
        ));
        let bad = dir.path().join("bad.vkey");
        fs::write(&bad, "not a key").unwrap();
        assert!(matches!(
            PolicyTrust::load(&[bad]),
            Err(PolicyKeyError::Invalid { .. })
        ));
    }

    #[test]
    fn a_key_beside_a_vkey_of_another_key_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let policies = tempfile::tempdir().unwrap();
        write_set(policies.path());
        let first = keygen(a.path(), "alice").unwrap();
        let second = keygen(b.path(), "bob").unwrap();
        fs::copy(&second.vkey_file, &first.vkey_file).unwrap();
        assert!(matches!(
            sign_dir(policies.path(), &first.key_file, None),
            Err(SigningToolError::Mismatch { .. })
        ));
    }
}
