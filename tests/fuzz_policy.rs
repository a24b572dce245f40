//! A proptest fuzz harness for policy parsing: arbitrary text and mutations of
//! the shipped catalog never panic, and every refusal names a file and a line
//! that exist.

use std::path::{Path, PathBuf};

use proofgate::policy::load_sources;
use proptest::prelude::*;

fn shipped() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect()
}

fn check(files: Vec<(String, String)>) -> Result<(), TestCaseError> {
    let lines: std::collections::HashMap<String, usize> = files
        .iter()
        .map(|(n, t)| (n.clone(), t.lines().count() + 1))
        .collect();
    let sources = files.into_iter().map(|(n, t)| (PathBuf::from(n), t));
    if let Err(errors) = load_sources(sources) {
        prop_assert!(!errors.0.is_empty());
        for e in &errors.0 {
            let name = e.file.to_string_lossy().into_owned();
            let max = lines.get(&name).copied();
            prop_assert!(max.is_some(), "error names an unknown file {name}");
            prop_assert!(
                e.line <= max.unwrap_or(0),
                "{name}:{} beyond the file",
                e.line
            );
            prop_assert!(!e.problem.is_empty());
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(usize, u8),
    DeleteLine(usize),
    DuplicateLine(usize),
    Truncate(usize),
    Insert(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::FlipByte(a, b)),
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop_oneof![
                Just("mode = \"abolished\"\n".to_owned()),
                Just("condition = 'record.x >'\n".to_owned()),
                Just("[[matter]]\n".to_owned()),
                Just("fallback = \"abolished\"\n".to_owned()),
                Just("spot_check_rate = 7.5\n".to_owned()),
                "[a-z_ =\"'\\[\\]\\n0-9.]{0,40}",
            ]
        )
            .prop_map(|(a, s)| Mutation::Insert(a, s)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    match m {
        Mutation::FlipByte(at, b) => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= b | 1;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Mutation::DeleteLine(at) if !lines.is_empty() => {
            lines.remove(at % lines.len());
            lines.concat()
        }
        Mutation::DuplicateLine(at) if !lines.is_empty() => {
            let i = at % lines.len();
            lines.insert(i, lines[i]);
            lines.concat()
        }
        Mutation::Truncate(at) => {
            let mut cut = at % (text.len() + 1);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text[..cut].to_owned()
        }
        Mutation::Insert(at, s) => {
            let i = at % (lines.len() + 1);
            let mut owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            owned.insert(i, s.clone());
            owned.concat()
        }
        _ => text.to_owned(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(vec![("arbitrary.toml".into(), text)])?;
    }

    #[test]
    fn mutated_catalogs_never_panic_and_errors_point_into_the_files(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut files = shipped();
        let i = which % files.len();
        for m in &mutations {
            files[i].1 = apply(&files[i].1, m);
        }
        check(files)?;
    }
}
