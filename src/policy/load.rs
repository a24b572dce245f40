//! Reading policy files: TOML → raw model → validated [`PolicySet`].
//!
//! Every problem names its file and line; all problems of a set are reported
//! at once so an author fixes them in one pass.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cel::Env;
use ring::digest;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::condition::Condition;
use super::model::{CommitmentTerms, Matter, Mode, PolicySet, Proof, RequiredProof};

pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_DISHONESTY_DAYS: u32 = 365;
const MAX_DEADLINE_WORKING_DAYS: u32 = 260;
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_ID_LEN: usize = 64;

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not tied to a line (an unreadable file).
    pub line: usize,
    pub problem: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.problem)
        }
    }
}

/// Every problem found in a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    proof: Vec<Spanned<RawProof>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    matter: Vec<Spanned<RawMatter>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawProof {
    id: String,
    name: String,
    mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    department: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fields: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    condition: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claim: Option<String>,
    legal_basis: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    commitment_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commitment_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spot_check_rate: Option<f64>,
    /// Refuse this commitment from an applicant with a live dishonesty
    /// record; the fallback applies instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    refuse_if_dishonest: bool,
    /// How long a false commitment bars the applicant (days; default 365).
    #[serde(skip_serializing_if = "Option::is_none")]
    dishonesty_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verification_deadline_working_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMatter {
    id: String,
    name: String,
    #[serde(default)]
    proofs: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conditional: Vec<RawConditional>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConditional {
    proof: Spanned<String>,
    when: Spanned<String>,
}

/// A parsed file kept with its text, to turn byte spans into lines.
struct SourceFile {
    path: PathBuf,
    text: String,
    /// Byte offsets of the file's newlines, so a line is a binary search
    /// (a rescan per item made loading a 4,000-proof catalog quadratic).
    newlines: Vec<usize>,
}

impl SourceFile {
    fn new(path: PathBuf, text: String) -> Self {
        let newlines = text
            .bytes()
            .enumerate()
            .filter_map(|(at, b)| (b == b'\n').then_some(at))
            .collect();
        Self {
            path,
            text,
            newlines,
        }
    }

    /// The 1-based line where `span` starts.
    fn line_of(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.newlines.partition_point(|&at| at < end) + 1
    }

    fn error(&self, span: Range<usize>, problem: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.path.clone(),
            line: self.line_of(span),
            problem: problem.into(),
        }
    }
}

/// Loads every `*.toml` file of `dir` (sorted by name) as one policy set.
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
    let dir_error = |problem: String| {
        PolicyErrors(vec![PolicyError {
            file: dir.to_path_buf(),
            line: 0,
            problem,
        }])
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| dir_error(format!("cannot read policy directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(dir_error("no *.toml policy files found".into()));
    }
    let mut sources = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push((path, text)),
            Err(e) => errors.push(PolicyError {
                file: path,
                line: 0,
                problem: format!("cannot read file: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    load_sources(sources)
}

/// Loads a policy set from (file name, text) pairs. Also used to rebuild a
/// set from the canonical text recorded in the audit log.
pub fn load_sources(
    sources: impl IntoIterator<Item = (PathBuf, String)>,
) -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for (path, text) in sources {
        let file = SourceFile::new(path, text);
        match toml::from_str::<RawFile>(&file.text) {
            Ok(raw) => parsed.push((file, raw)),
            Err(e) => {
                let line = e.span().map(|s| file.line_of(s)).unwrap_or(0);
                errors.push(PolicyError {
                    file: file.path.clone(),
                    line,
                    problem: e.message().trim().to_owned(),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    Compiler::default().compile(&parsed)
}

impl PolicySet {
    /// Rebuilds a set from its canonical text (as kept in the audit log).
    pub fn from_canonical(canonical: &str) -> Result<PolicySet, PolicyErrors> {
        load_sources([(PathBuf::from("<canonical>"), canonical.to_owned())])
    }
}

struct Compiler {
    env: Arc<Env>,
    errors: Vec<PolicyError>,
    /// Each distinct (allowed variables, source) is compiled once: a city's
    /// catalog repeats the same few conditions across thousands of proofs.
    conditions: HashMap<(&'static [&'static str], String), Result<Condition, String>>,
}

impl Default for Compiler {
    fn default() -> Self {
        Self {
            env: Arc::new(Env::stdlib()),
            errors: Vec::new(),
            conditions: HashMap::new(),
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Compiler {
    fn condition(
        &mut self,
        source: &str,
        allowed: &'static [&'static str],
    ) -> Result<Condition, String> {
        let env = &self.env;
        self.conditions
            .entry((allowed, source.to_owned()))
            .or_insert_with(|| Condition::compile(source, allowed, env))
            .clone()
    }

    fn compile(mut self, files: &[(SourceFile, RawFile)]) -> Result<PolicySet, PolicyErrors> {
        let mut proofs: BTreeMap<String, Arc<Proof>> = BTreeMap::new();
        let mut raw_proofs: BTreeMap<String, RawProof> = BTreeMap::new();
        let mut proof_sites: BTreeMap<String, String> = BTreeMap::new();
        for (file, raw) in files {
            for item in &raw.proof {
                let span = item.span();
                let raw_proof = item.get_ref();
                let site = format!("{}:{}", file.path.display(), file.line_of(span.clone()));
                if let Some(first) = proof_sites.get(&raw_proof.id) {
                    self.errors.push(file.error(
                        span,
                        format!("proof `{}` is already defined at {first}", raw_proof.id),
                    ));
                    continue;
                }
                proof_sites.insert(raw_proof.id.clone(), site);
                if let Some(proof) = self.proof(file, span, raw_proof) {
                    proofs.insert(proof.id.clone(), Arc::new(proof));
                    raw_proofs.insert(raw_proof.id.clone(), raw_proof.clone());
                }
            }
        }
        let mut matters = BTreeMap::new();
        let mut raw_matters: BTreeMap<String, RawMatter> = BTreeMap::new();
        let mut matter_sites: BTreeMap<String, String> = BTreeMap::new();
        for (file, raw) in files {
            for item in &raw.matter {
                let span = item.span();
                let raw_matter = item.get_ref();
                let site = format!("{}:{}", file.path.display(), file.line_of(span.clone()));
                if let Some(first) = matter_sites.get(&raw_matter.id) {
                    self.errors.push(file.error(
                        span,
                        format!("matter `{}` is already defined at {first}", raw_matter.id),
                    ));
                    continue;
                }
                matter_sites.insert(raw_matter.id.clone(), site);
                if let Some(matter) = self.matter(file, span, raw_matter, &proofs, &proof_sites) {
                    matters.insert(matter.id.clone(), matter);
                    raw_matters.insert(raw_matter.id.clone(), raw_matter.clone());
                }
            }
        }
        if proof_sites.is_empty() && self.errors.is_empty() {
            if let Some((file, _)) = files.first() {
                self.errors.push(PolicyError {
                    file: file.path.clone(),
                    line: 0,
                    problem: "the policy set defines no proof".into(),
                });
            }
        }
        if !self.errors.is_empty() {
            return Err(PolicyErrors(self.errors));
        }
        let canonical = canonical_text(raw_proofs, raw_matters);
        let version = format!(
            "sha256:{}",
            hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
        );
        Ok(PolicySet {
            version,
            canonical,
            proofs,
            matters,
        })
    }

    fn proof(&mut self, file: &SourceFile, span: Range<usize>, raw: &RawProof) -> Option<Proof> {
        let errors_before = self.errors.len();
        let problem = |this: &mut Self, msg: String| {
            this.errors
                .push(file.error(span.clone(), format!("proof `{}`: {msg}", raw.id)))
        };
        if !valid_id(&raw.id) {
            problem(
                self,
                format!("id must be 1–{MAX_ID_LEN} characters of a-z, 0-9, '-' or '_'"),
            );
        }
        if raw.name.trim().is_empty() {
            problem(self, "name is empty".into());
        }
        if raw.legal_basis.trim().is_empty() {
            problem(
                self,
                "legal_basis is empty: every decision must cite one".into(),
            );
        }
        let uses = |mode: Mode| raw.mode == mode || raw.fallback == Some(mode);
        if let Some(fallback) = raw.fallback {
            if fallback == raw.mode {
                problem(self, "fallback is the same as mode".into());
            }
            if fallback == Mode::Abolished {
                problem(
                    self,
                    "fallback cannot be `abolished`: an unavailable department must never waive a proof"
                        .into(),
                );
            }
            if raw.mode == Mode::Abolished {
                problem(
                    self,
                    "an abolished proof has nothing to fall back from".into(),
                );
            }
            if raw.mode == Mode::Commitment && !raw.refuse_if_dishonest {
                problem(
                    self,
                    "a commitment falls back only when `refuse_if_dishonest = true`".into(),
                );
            }
        }
        if uses(Mode::DataQuery) || uses(Mode::DepartmentVerification) {
            match &raw.department {
                Some(d) if valid_id(d) => {}
                Some(_) => problem(self, "department id must be a-z, 0-9, '-' or '_'".into()),
                None => problem(
                    self,
                    "`department` is required for data_query and department_verification".into(),
                ),
            }
        }
        let mut condition = None;
        if uses(Mode::DataQuery) {
            if raw.query.as_deref().is_none_or(|q| q.trim().is_empty()) {
                problem(self, "`query` is required for data_query".into());
            }
            if raw.fields.is_empty() {
                problem(
                    self,
                    "`fields` must list the minimum fields the query needs".into(),
                );
            }
            match &raw.condition {
                None => problem(self, "`condition` is required for data_query".into()),
                Some(source) => {
                    match self.condition(source.get_ref(), &["record", "found", "applicant"]) {
                        Ok(c) => condition = Some(c),
                        Err(msg) => self.errors.push(file.error(
                            source.span(),
                            format!("proof `{}`: bad condition: {msg}", raw.id),
                        )),
                    }
                }
            }
        } else if raw.condition.is_some() {
            problem(self, "`condition` applies only to data_query".into());
        }
        if raw
            .verification_deadline_working_days
            .is_some_and(|days| days == 0 || days > MAX_DEADLINE_WORKING_DAYS)
        {
            problem(
                self,
                format!("verification_deadline_working_days must be 1–{MAX_DEADLINE_WORKING_DAYS}"),
            );
        }
        if uses(Mode::DepartmentVerification) && raw.verification_deadline_working_days.is_none() {
            problem(
                self,
                "`verification_deadline_working_days` is required for department_verification"
                    .into(),
            );
        }
        let mut commitment = None;
        if uses(Mode::Commitment) {
            let rate = raw.spot_check_rate.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&rate) {
                problem(
                    self,
                    format!("spot_check_rate {rate} is not within 0.0–1.0"),
                );
            }
            match (&raw.commitment_text, &raw.commitment_version) {
                (Some(text), Some(version))
                    if !text.trim().is_empty() && !version.trim().is_empty() =>
                {
                    commitment = Some(CommitmentTerms {
                        text: text.clone(),
                        version: version.clone(),
                        spot_check_rate: rate,
                        refuse_if_dishonest: raw.refuse_if_dishonest,
                        dishonesty_days: raw.dishonesty_days.unwrap_or(DEFAULT_DISHONESTY_DAYS),
                    });
                }
                _ => problem(
                    self,
                    "`commitment_text` and `commitment_version` are required for commitment".into(),
                ),
            }
        }
        let call_timeout = raw
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_CALL_TIMEOUT);
        if call_timeout.is_zero() || call_timeout > MAX_CALL_TIMEOUT {
            problem(
                self,
                format!("timeout_ms must be 1–{} ms", MAX_CALL_TIMEOUT.as_millis()),
            );
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Proof {
            id: raw.id.clone(),
            name: raw.name.clone(),
            mode: raw.mode,
            fallback: raw.fallback,
            department: raw.department.clone(),
            query: raw.query.clone(),
            fields: raw.fields.clone(),
            condition,
            claim: raw.claim.clone(),
            legal_basis: raw.legal_basis.clone(),
            commitment,
            call_timeout,
            verification_deadline_working_days: raw.verification_deadline_working_days,
        })
    }

    fn matter(
        &mut self,
        file: &SourceFile,
        span: Range<usize>,
        raw: &RawMatter,
        proofs: &BTreeMap<String, Arc<Proof>>,
        proof_sites: &BTreeMap<String, String>,
    ) -> Option<Matter> {
        let errors_before = self.errors.len();
        if !valid_id(&raw.id) {
            self.errors.push(file.error(
                span.clone(),
                format!(
                    "matter `{}`: id must be 1–{MAX_ID_LEN} characters of a-z, 0-9, '-' or '_'",
                    raw.id
                ),
            ));
        }
        if raw.proofs.is_empty() && raw.conditional.is_empty() {
            self.errors.push(file.error(
                span.clone(),
                format!("matter `{}` requires no proof", raw.id),
            ));
        }
        let mut required = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let listed = raw
            .proofs
            .iter()
            .map(|p| (p, None))
            .chain(raw.conditional.iter().map(|c| (&c.proof, Some(&c.when))));
        for (proof_id, when) in listed {
            let id = proof_id.get_ref();
            if !seen.insert(id.clone()) {
                self.errors.push(file.error(
                    proof_id.span(),
                    format!("matter `{}` lists proof `{id}` twice", raw.id),
                ));
                continue;
            }
            let Some(proof) = proofs.get(id) else {
                let problem = if proof_sites.contains_key(id) {
                    format!("matter `{}` needs proof `{id}`, which has errors", raw.id)
                } else {
                    format!("matter `{}` needs unknown proof `{id}`", raw.id)
                };
                self.errors.push(file.error(proof_id.span(), problem));
                continue;
            };
            let when = match when {
                None => None,
                Some(source) => match self.condition(source.get_ref(), &["applicant"]) {
                    Ok(c) => Some(c),
                    Err(msg) => {
                        self.errors.push(file.error(
                            source.span(),
                            format!("matter `{}`: bad `when` condition: {msg}", raw.id),
                        ));
                        continue;
                    }
                },
            };
            required.push(RequiredProof {
                proof: Arc::clone(proof),
                when,
            });
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Matter {
            id: raw.id.clone(),
            name: raw.name.clone(),
            proofs: required,
        })
    }
}

/// Sorted by id, comments and layout dropped: two sets that mean the same
/// thing get the same version whatever their file layout.
fn canonical_text(
    proofs: BTreeMap<String, RawProof>,
    matters: BTreeMap<String, RawMatter>,
) -> String {
    let file = RawFile {
        proof: proofs
            .into_values()
            .map(|v| Spanned::new(0..0, v))
            .collect(),
        matter: matters
            .into_values()
            .map(|v| Spanned::new(0..0, v))
            .collect(),
    };
    // Serializing plain strings, numbers and arrays cannot fail.
    toml::to_string(&file).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn line_of_counts_the_newlines_before_the_span(
            text in "[a-z\n]{0,200}",
            start in 0usize..260,
        ) {
            let file = SourceFile::new(PathBuf::from("p.toml"), text.clone());
            let end = start.min(text.len());
            let naive = text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1;
            prop_assert_eq!(file.line_of(start..start + 1), naive);
        }
    }
}
