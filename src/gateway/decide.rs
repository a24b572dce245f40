//! The live answer source: asks the departments for the decision core
//! ([`crate::policy::decide_proof`]) and records every answer as it came,
//! so replay can hand the same answers back to the same core.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Mutex;

use ring::rand::{SecureRandom, SystemRandom};

use crate::audit::ticket_key;
use crate::departments::{CallFailure, DepartmentDirectory};
use crate::pb::{Purpose, QueryRequest, RecordedAnswer, Subject, VerifyRequest};
use crate::policy::{AnswerSource, Mode, Proof};

/// Tickets handed out by departments but not yet in the log: a department
/// that completes one this early is told to retry, not that it is unknown.
pub type IssuedTickets = Mutex<HashSet<Vec<u8>>>;

/// The tickets one submission noted; forgets them when dropped, whether the
/// submission was logged, failed, or was cancelled by the hall hanging up.
pub struct TicketGuard<'a> {
    issued: &'a IssuedTickets,
    mine: Mutex<Vec<Vec<u8>>>,
}

impl<'a> TicketGuard<'a> {
    pub fn new(issued: &'a IssuedTickets) -> Self {
        Self {
            issued,
            mine: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, key: Vec<u8>) {
        lock(self.issued).insert(key.clone());
        lock(&self.mine).push(key);
    }
}

impl Drop for TicketGuard<'_> {
    fn drop(&mut self) {
        let mine = std::mem::take(&mut *lock(&self.mine));
        let mut issued = lock(self.issued);
        for key in &mine {
            issued.remove(key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who asks, and why: the part of a department request every proof of one
/// application shares.
pub struct Asker<'a> {
    pub application_id: &'a str,
    pub matter_id: &'a str,
    pub officer_id: &'a str,
    pub hall_id: &'a str,
    pub subject: &'a Subject,
}

/// Asks the departments of one application's proofs.
pub struct LiveSource<'a> {
    pub asker: &'a Asker<'a>,
    pub departments: &'a DepartmentDirectory,
    pub rng: &'a SystemRandom,
    pub tickets: &'a TicketGuard<'a>,
}

fn nonce(rng: &SystemRandom) -> String {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails if the OS has no entropy source at all.
    let _ = rng.fill(&mut bytes);
    hex::encode(bytes)
}

fn millis(d: std::time::Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

fn failed(department: &str, mode: Mode, nonce: String, failure: &CallFailure) -> RecordedAnswer {
    RecordedAnswer {
        department_id: department.to_owned(),
        request_nonce: nonce,
        failure: failure.to_string(),
        mode: mode.as_pb() as i32,
        ..Default::default()
    }
}

impl LiveSource<'_> {
    fn purpose(&self, proof: &Proof) -> Purpose {
        Purpose {
            application_id: self.asker.application_id.to_owned(),
            matter_id: self.asker.matter_id.to_owned(),
            proof_id: proof.id.clone(),
            officer_id: self.asker.officer_id.to_owned(),
            hall_id: self.asker.hall_id.to_owned(),
            legal_basis: proof.legal_basis.clone(),
        }
    }

    async fn ask(&self, proof: &Proof, mode: Mode) -> RecordedAnswer {
        let department = proof.department.as_deref().unwrap_or_default();
        let nonce = nonce(self.rng);
        match mode {
            Mode::DataQuery => {
                let request = QueryRequest {
                    request_nonce: nonce.clone(),
                    query: proof.query.clone().unwrap_or_default(),
                    subject: Some(self.asker.subject.clone()),
                    fields: proof.fields.clone(),
                    purpose: Some(self.purpose(proof)),
                };
                match self
                    .departments
                    .query(department, request, proof.call_timeout)
                    .await
                {
                    Ok(answered) => {
                        let a = answered.answer;
                        RecordedAnswer {
                            department_id: a.department_id,
                            request_nonce: a.request_nonce,
                            found: a.found,
                            fields: a.fields,
                            signature: a.signature,
                            batch: a.batch,
                            latency_ms: millis(answered.latency),
                            mode: mode.as_pb() as i32,
                            ..Default::default()
                        }
                    }
                    Err(failure) => failed(department, mode, nonce, &failure),
                }
            }
            Mode::DepartmentVerification => {
                let request = VerifyRequest {
                    request_nonce: nonce.clone(),
                    proof_id: proof.id.clone(),
                    subject: Some(self.asker.subject.clone()),
                    claim: proof.claim.clone().unwrap_or_else(|| proof.name.clone()),
                    purpose: Some(self.purpose(proof)),
                };
                match self
                    .departments
                    .verify(department, request, proof.call_timeout)
                    .await
                {
                    Ok(answered) => {
                        let a = answered.answer;
                        RecordedAnswer {
                            department_id: a.department_id,
                            request_nonce: a.request_nonce,
                            verification: a.outcome,
                            signature: a.signature,
                            batch: a.batch,
                            latency_ms: millis(answered.latency),
                            mode: mode.as_pb() as i32,
                            ticket: a.ticket,
                            reason: a.reason,
                            expected_completion_unix_ms: a.expected_completion_unix_ms,
                            ..Default::default()
                        }
                    }
                    Err(failure) => failed(department, mode, nonce, &failure),
                }
            }
            // The core asks only in modes that ask a department.
            Mode::Abolished | Mode::Commitment => RecordedAnswer {
                department_id: department.to_owned(),
                failure: "no department is asked in this mode".into(),
                mode: mode.as_pb() as i32,
                ..Default::default()
            },
        }
    }
}

impl AnswerSource for LiveSource<'_> {
    /// A failed call is recorded as an answer with its failure.
    type Error = Infallible;

    async fn answer(&mut self, proof: &Proof, mode: Mode) -> Result<RecordedAnswer, Infallible> {
        let answer = self.ask(proof, mode).await;
        if !answer.ticket.is_empty() {
            let department = proof.department.as_deref().unwrap_or_default();
            self.tickets.note(ticket_key(department, &answer.ticket));
        }
        Ok(answer)
    }
}
