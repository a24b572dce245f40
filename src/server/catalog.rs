//! The sample catalog (`policies/` of the source tree) compiled into the
//! binary, so `proofgate serve` works from any folder.

use std::path::PathBuf;

use crate::policy::{load_sources, PolicyErrors, PolicySet};

/// The files of `policies/`, by name.
pub const SAMPLE_FILES: &[(&str, &str)] = &[
    ("matters.toml", include_str!("../../policies/matters.toml")),
    (
        "proofs-abolished.toml",
        include_str!("../../policies/proofs-abolished.toml"),
    ),
    (
        "proofs-commitment.toml",
        include_str!("../../policies/proofs-commitment.toml"),
    ),
    (
        "proofs-data-query.toml",
        include_str!("../../policies/proofs-data-query.toml"),
    ),
    (
        "proofs-verification.toml",
        include_str!("../../policies/proofs-verification.toml"),
    ),
];

/// The sample catalog, loaded like a folder of the same files.
pub fn sample() -> Result<PolicySet, PolicyErrors> {
    load_sources(
        SAMPLE_FILES
            .iter()
            .map(|(name, text)| (PathBuf::from("<built-in>").join(name), (*text).to_owned())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_catalog_is_the_policies_folder() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        names.sort();
        let compiled: Vec<&str> = SAMPLE_FILES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, compiled, "a file in policies/ is not compiled in");
        let from_folder = crate::policy::load_dir(&dir).unwrap();
        assert_eq!(sample().unwrap().version, from_folder.version);
    }
}
