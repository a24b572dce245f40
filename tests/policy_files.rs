//! Malformed policy files are refused with the file, the line and the problem,
//! by the library and by `proofgate policy check`.

use std::path::Path;
use std::process::Command;

use proofgate::policy::load_dir;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const GOOD_PROOF: &str = r#"
[[proof]]
id = "waived"
name = "Waived proof"
mode = "abolished"
legal_basis = "some rule"
"#;

fn problems(files: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        write(dir.path(), name, text);
    }
    load_dir(dir.path())
        .expect_err("set must be refused")
        .0
        .iter()
        .map(|e| {
            let file = e.file.file_name().unwrap().to_string_lossy().into_owned();
            format!("{file}:{}: {}", e.line, e.problem)
        })
        .collect()
}

#[test]
fn a_toml_syntax_error_names_file_and_line() {
    let p = problems(&[("a.toml", "[[proof]]\nid = \"x\"\nname = \"unterminated\n")]);
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("a.toml:3:"), "{p:?}");
}

#[test]
fn an_unknown_mode_or_field_names_its_line() {
    let p = problems(&[(
        "b.toml",
        "[[proof]]\nid = \"x\"\nname = \"n\"\nmode = \"maybe\"\nlegal_basis = \"b\"\n",
    )]);
    assert!(p[0].starts_with("b.toml:4:"), "{p:?}");
    assert!(p[0].contains("maybe"), "{p:?}");
    let p = problems(&[(
        "c.toml",
        "[[proof]]\nid = \"x\"\nname = \"n\"\nmode = \"abolished\"\nlegal_basis = \"b\"\ncolour = \"red\"\n",
    )]);
    assert!(p[0].starts_with("c.toml:6:"), "{p:?}");
    assert!(p[0].contains("colour"), "{p:?}");
}

#[test]
fn a_bad_condition_names_the_condition_line() {
    let text = r#"[[proof]]
id = "q"
name = "Query"
mode = "data_query"
department = "civil-affairs"
query = "marriage_record"
fields = ["status"]
condition = 'record.status =='
legal_basis = "b"
"#;
    let p = problems(&[("d.toml", text)]);
    assert!(p[0].starts_with("d.toml:8:"), "{p:?}");
    assert!(p[0].contains("bad condition"), "{p:?}");
}

#[test]
fn missing_mode_requirements_are_each_reported() {
    let text = r#"[[proof]]
id = "q"
name = "Query"
mode = "data_query"
legal_basis = "b"

[[proof]]
id = "c"
name = "Commitment"
mode = "commitment"
legal_basis = "b"
"#;
    let p = problems(&[("e.toml", text)]);
    let joined = p.join("\n");
    assert!(
        joined.contains("e.toml:1: proof `q`: `department` is required"),
        "{joined}"
    );
    assert!(
        joined.contains("e.toml:1: proof `q`: `condition` is required"),
        "{joined}"
    );
    assert!(
        joined.contains("e.toml:7: proof `c`: `commitment_text`"),
        "{joined}"
    );
}

#[test]
fn unknown_and_duplicate_references_name_both_places() {
    let matters = "[[matter]]\nid = \"m\"\nname = \"Matter\"\nproofs = [\"waived\", \"ghost\"]\n";
    let p = problems(&[("proofs.toml", GOOD_PROOF), ("matters.toml", matters)]);
    assert_eq!(
        p,
        ["matters.toml:4: matter `m` needs unknown proof `ghost`"]
    );
    let p = problems(&[("a.toml", GOOD_PROOF), ("b.toml", GOOD_PROOF)]);
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("b.toml:2:"), "{p:?}");
    assert!(p[0].contains("a.toml:2"), "{p:?}");
}

#[test]
fn the_shipped_catalog_is_valid_and_covers_all_four_modes() {
    let set = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
    assert!(set.proofs.len() >= 30, "{} proofs", set.proofs.len());
    assert!(set.matters.len() >= 8);
    let modes: std::collections::BTreeSet<_> =
        set.proofs.values().map(|p| p.mode.policy_word()).collect();
    assert_eq!(modes.len(), 4);
    // Layout does not change the version: the canonical form reloads to the same digest.
    let again = proofgate::policy::PolicySet::from_canonical(&set.canonical).unwrap();
    assert_eq!(again.version, set.version);
}

#[test]
fn policy_check_command_prints_the_version_or_the_problems() {
    let ok = Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(["policy", "check"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("version sha256:"));

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.toml", "[[proof]]\nid = 3\n");
    let bad = Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("bad.toml:2:"), "{stderr}");
}
