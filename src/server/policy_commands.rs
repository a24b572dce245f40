//! `proofgate policy keygen` and `proofgate policy sign`: the command-line
//! face of [`crate::security::policy_signing`], printing what was done and
//! answering an exit code (see [`super::exit`]).

use std::path::Path;

use super::exit;
use crate::security::policy_signing::{keygen as make_key, sign_dir, SigningToolError};

fn exit_code(e: &SigningToolError) -> u8 {
    match e {
        SigningToolError::Policy(_) => exit::DATA,
        SigningToolError::Key(crate::security::KeyError::Io { .. })
        | SigningToolError::Key(crate::security::KeyError::Random)
        | SigningToolError::Write { .. } => exit::FAILURE,
        SigningToolError::Key(_)
        | SigningToolError::Name { .. }
        | SigningToolError::Mismatch { .. }
        | SigningToolError::Vkey { .. } => exit::CONFIG,
    }
}

fn fail(e: SigningToolError) -> u8 {
    eprintln!("proofgate: {e}");
    exit_code(&e)
}

/// `policy keygen --out DIR [--name NAME]`.
pub fn keygen(out: &Path, name: &str) -> u8 {
    match make_key(out, name) {
        Ok(made) => {
            println!("policy signing key written to {}", made.key_file.display());
            println!(
                "verifier key written to {} (give it to `serve --policy-key`):",
                made.vkey_file.display()
            );
            println!("{}", made.vkey);
            exit::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `policy sign DIR --key KEYFILE [--name NAME]`.
pub fn sign(dir: &Path, key: &Path, name: Option<&str>) -> u8 {
    match sign_dir(dir, key, name) {
        Ok(signed) => {
            println!(
                "signed {} version {} as {}: {}",
                dir.display(),
                signed.version,
                signed.signer,
                signed.path.display()
            );
            exit::SUCCESS
        }
        Err(e) => fail(e),
    }
}
