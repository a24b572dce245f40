//! A Jinhua-scale synthetic catalogue for load and start-up measurements:
//! 4,052 proofs split over the four modes as Jinhua reported them
//! (861 / 613 / 1,081 / 1,497 = 21.2 / 15.1 / 26.7 / 36.9 %) and about 1,000
//! matters of 2–8 proofs each. Deterministic: the same arguments write the
//! same files.

use std::fmt::Write as _;
use std::path::Path;

/// Jinhua 2019: abolished, commitment, data query, department verification.
pub const JINHUA_COUNTS: [usize; 4] = [861, 613, 1081, 1497];

/// Data sources of the built-in mock departments the queries point at.
const QUERIES: &[(&str, &str, &str, &str)] = &[
    (
        "public-security",
        "household_registration",
        r#"["status"]"#,
        r#"record.status == "registered""#,
    ),
    (
        "public-security",
        "criminal_record",
        r#"["has_record"]"#,
        "!record.has_record",
    ),
    (
        "civil-affairs",
        "marriage_record",
        r#"["status"]"#,
        r#"record.status == "married""#,
    ),
    (
        "human-resources",
        "social_insurance",
        r#"["months_paid"]"#,
        "record.months_paid >= 12",
    ),
    (
        "provident-fund",
        "hpf_account",
        r#"["status", "months_paid"]"#,
        r#"record.status == "normal" && record.months_paid >= 6"#,
    ),
    (
        "natural-resources",
        "property_ownership",
        r#"["properties"]"#,
        "record.properties >= 1",
    ),
];
const VERIFIERS: &[&str] = &[
    "public-security",
    "civil-affairs",
    "provident-fund",
    "natural-resources",
    "market-regulation",
    "health",
    "education",
];

/// splitmix64: small, seedable, good enough to spread proofs over matters.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Proof counts per mode for `total` proofs, in Jinhua's proportions.
pub fn mode_counts(total: usize) -> [usize; 4] {
    let jinhua_total: usize = JINHUA_COUNTS.iter().sum();
    let mut counts = JINHUA_COUNTS.map(|c| c * total / jinhua_total);
    let assigned: usize = counts.iter().sum();
    counts[3] += total - assigned;
    counts
}

/// Writes `proofs.toml` and `matters.toml` into `dir`; returns a summary line.
pub fn write_jinhua_catalogue(
    dir: &Path,
    proofs: usize,
    matters: usize,
) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let counts = mode_counts(proofs);
    let mut out = String::with_capacity(proofs * 300);
    let mut ids = Vec::with_capacity(proofs);
    let mut n = 0usize;
    for (mode, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            let id = format!("proof-{n:05}");
            let _ = writeln!(
                out,
                "[[proof]]\nid = \"{id}\"\nname = \"合成证明 Synthetic proof {n}\""
            );
            let _ = writeln!(out, "legal_basis = \"synthetic catalogue, item {n}\"");
            match mode {
                0 => out.push_str("mode = \"abolished\"\n"),
                1 => {
                    let _ = writeln!(
                        out,
                        "mode = \"commitment\"\ncommitment_text = \"本人承诺第{n}项内容属实。\"\ncommitment_version = \"v1\"\nspot_check_rate = 0.05"
                    );
                }
                2 => {
                    let (department, query, fields, condition) = QUERIES[n % QUERIES.len()];
                    let _ = writeln!(
                        out,
                        "mode = \"data_query\"\ndepartment = \"{department}\"\nquery = \"{query}\"\nfields = {fields}\ncondition = '{condition}'\nfallback = \"department_verification\"\nverification_deadline_working_days = 3"
                    );
                }
                _ => {
                    let department = VERIFIERS[n % VERIFIERS.len()];
                    let _ = writeln!(
                        out,
                        "mode = \"department_verification\"\ndepartment = \"{department}\"\nverification_deadline_working_days = {}",
                        3 + n % 5
                    );
                }
            }
            out.push('\n');
            ids.push(id);
            n += 1;
        }
    }
    std::fs::write(dir.join("proofs.toml"), out)?;
    let mut rng = Rng(0x005e_ed0f_a11c_17e5);
    let mut out = String::with_capacity(matters * 200);
    for m in 0..matters {
        let wanted = 2 + rng.below(7);
        let mut chosen: Vec<&str> = Vec::with_capacity(wanted);
        while chosen.len() < wanted.min(ids.len()) {
            let id = ids[rng.below(ids.len())].as_str();
            if !chosen.contains(&id) {
                chosen.push(id);
            }
        }
        let list = chosen
            .iter()
            .map(|id| format!("\"{id}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "[[matter]]\nid = \"matter-{m:04}\"\nname = \"合成事项 Synthetic matter {m}\"\nproofs = [{list}]\n"
        );
    }
    std::fs::write(dir.join("matters.toml"), out)?;
    Ok(format!(
        "wrote {} proofs (abolished {}, commitment {}, data_query {}, department_verification {}) and {matters} matters to {}",
        proofs,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jinhua_split_is_kept_at_full_scale() {
        assert_eq!(mode_counts(4052), [861, 613, 1081, 1497]);
        assert_eq!(mode_counts(100).iter().sum::<usize>(), 100);
    }

    #[test]
    fn a_generated_catalogue_loads() {
        let dir = tempfile::tempdir().unwrap();
        write_jinhua_catalogue(dir.path(), 200, 50).unwrap();
        let set = crate::policy::load_dir(dir.path()).unwrap();
        assert_eq!(set.proofs.len(), 200);
        assert_eq!(set.matters.len(), 50);
    }
}
