//! Department answer signatures: the batch-signature format and its
//! verification. A leaf (on `merkle` and `pb` only), so the live gateway and
//! the audit replay check answers with the same code.
//!
//! Answers are signed in batches, as the X-Road security server does: the
//! answers a department gives in one moment are the leaves of an RFC 6962
//! tree, the department signs the root once, and each answer carries its
//! inclusion path. The gateway checks the path (two or three hashes) and the
//! Ed25519 signature once per root (~46 µs, more than the call it checks),
//! remembered in a bounded cache. Completions of pending verifications are
//! rare and signed one by one.

use std::collections::HashSet;
use std::sync::Mutex;

use prost::Message;
use ring::digest::{digest, SHA256};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use tokio::sync::{mpsc, oneshot};

use crate::merkle::{inclusion_proof, leaf_hash, root_of, verify_inclusion, Hash, LeafHashes};
use crate::pb::{AnswerBatchProof, CompleteVerificationRequest, QueryResponse, VerifyResponse};

const BATCH_DOMAIN: &[u8] = b"proofgate.v1.AnswerBatch\0";
const COMPLETION_DOMAIN: &[u8] = b"proofgate.v1.CompleteVerificationRequest\0";
/// Most answers under one signature.
const MAX_BATCH: usize = 512;
/// Verified roots remembered; the cache is emptied when full.
const CACHE_ROOTS: usize = 65_536;

/// A department answer signed through a batch.
pub trait BatchSigned: Message + Clone {
    const DOMAIN: &'static [u8];
    fn signature(&self) -> &[u8];
    fn batch(&self) -> Option<&AnswerBatchProof>;
    fn set_proof(&mut self, signature: Vec<u8>, batch: AnswerBatchProof);

    /// The leaf bytes: the answer without signature and batch proof.
    fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.set_proof(Vec::new(), AnswerBatchProof::default());
        [Self::DOMAIN, &unsigned.encode_to_vec()].concat()
    }
}

macro_rules! batch_signed {
    ($answer:ty, $domain:literal) => {
        impl BatchSigned for $answer {
            const DOMAIN: &'static [u8] = $domain;
            fn signature(&self) -> &[u8] {
                &self.signature
            }
            fn batch(&self) -> Option<&AnswerBatchProof> {
                self.batch.as_ref()
            }
            fn set_proof(&mut self, signature: Vec<u8>, batch: AnswerBatchProof) {
                self.signature = signature;
                self.batch = (batch != AnswerBatchProof::default()).then_some(batch);
            }
        }
    };
}

batch_signed!(QueryResponse, b"proofgate.v1.QueryResponse\0");
batch_signed!(VerifyResponse, b"proofgate.v1.VerifyResponse\0");

fn root_message(root: &[u8]) -> Vec<u8> {
    [BATCH_DOMAIN, root].concat()
}

type SignRequest = (Vec<u8>, oneshot::Sender<(Vec<u8>, AnswerBatchProof)>);

/// Signs answers in batches on one task. Batching is adaptive, like group
/// commit: the signer takes every answer already queued and signs at once,
/// never waiting for company. Alone, an answer is signed immediately; under
/// load, the answers that queue while one batch is signed form the next, so a
/// burst costs one signature here and one verification at the gateway.
#[derive(Clone)]
pub struct BatchSigner {
    tx: mpsc::Sender<SignRequest>,
}

impl BatchSigner {
    pub fn start(key: std::sync::Arc<Ed25519KeyPair>) -> Self {
        let (tx, mut rx) = mpsc::channel::<SignRequest>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let leaves: Vec<Hash> = batch.iter().map(|(bytes, _)| leaf_hash(bytes)).collect();
                let root = root_of(&leaves);
                let signature = key.sign(&root_message(&root)).as_ref().to_vec();
                let size = leaves.len() as u64;
                for (index, (_, reply)) in batch.drain(..).enumerate() {
                    let path = inclusion_proof(&LeafHashes(&leaves), index as u64, size)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|h| h.to_vec())
                        .collect();
                    let proof = AnswerBatchProof {
                        root: root.to_vec(),
                        index: index as u64,
                        size,
                        path,
                    };
                    let _ = reply.send((signature.clone(), proof));
                }
            }
        });
        Self { tx }
    }

    /// Signs `answer` in place (signature and batch proof).
    pub async fn sign<M: BatchSigned>(&self, answer: &mut M) -> Result<(), &'static str> {
        let (reply, signed) = oneshot::channel();
        self.tx
            .send((answer.signing_bytes(), reply))
            .await
            .map_err(|_| "signer stopped")?;
        let (signature, proof) = signed.await.map_err(|_| "signer stopped")?;
        answer.set_proof(signature, proof);
        Ok(())
    }
}

/// Checks batch-signed answers, each batch signature once.
#[derive(Default)]
pub struct AnswerVerifier {
    verified_roots: Mutex<HashSet<[u8; 32]>>,
}

impl AnswerVerifier {
    /// Whether `answer` is in a batch whose root `public_key` signed.
    pub fn verify<M: BatchSigned>(&self, public_key: &[u8], answer: &M) -> bool {
        let Some(batch) = answer.batch() else {
            return false;
        };
        let Ok(root) = <Hash>::try_from(batch.root.as_slice()) else {
            return false;
        };
        let path: Option<Vec<Hash>> = batch
            .path
            .iter()
            .map(|h| h.as_slice().try_into().ok())
            .collect();
        let Some(path) = path else {
            return false;
        };
        let leaf = leaf_hash(&answer.signing_bytes());
        if !verify_inclusion(batch.index, batch.size, &leaf, &path, &root) {
            return false;
        }
        // Cache by (key, root, signature): a root verified under one key or
        // signature says nothing about another.
        let cache_key: [u8; 32] =
            digest(&SHA256, &[public_key, &root, answer.signature()].concat())
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]);
        {
            let cache = self
                .verified_roots
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if cache.contains(&cache_key) {
                return true;
            }
        }
        let valid = UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&root_message(&root), answer.signature())
            .is_ok();
        if valid {
            let mut cache = self
                .verified_roots
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_ROOTS {
                cache.clear();
            }
            cache.insert(cache_key);
        }
        valid
    }
}

fn completion_bytes(request: &CompleteVerificationRequest) -> Vec<u8> {
    let mut unsigned = request.clone();
    unsigned.signature.clear();
    [COMPLETION_DOMAIN, &unsigned.encode_to_vec()].concat()
}

/// Signs a completion in place.
pub fn sign_completion(key: &Ed25519KeyPair, request: &mut CompleteVerificationRequest) {
    request.signature = key.sign(&completion_bytes(request)).as_ref().to_vec();
}

/// Whether a completion carries a valid signature by `public_key`.
pub fn verify_completion(public_key: &[u8], request: &CompleteVerificationRequest) -> bool {
    !request.signature.is_empty()
        && UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&completion_bytes(request), &request.signature)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;
    use std::sync::Arc;

    fn key() -> Arc<Ed25519KeyPair> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Arc::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn answer(nonce: &str) -> QueryResponse {
        QueryResponse {
            request_nonce: nonce.into(),
            department_id: "civil-affairs".into(),
            found: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn batch_signed_answers_verify_and_any_change_breaks_them() {
        let department_key = key();
        let public = department_key.public_key().as_ref().to_vec();
        let signer = BatchSigner::start(Arc::clone(&department_key));
        let verifier = AnswerVerifier::default();
        // Many at once, so they share batches.
        let mut handles = Vec::new();
        for i in 0..40 {
            let signer = signer.clone();
            handles.push(tokio::spawn(async move {
                let mut a = answer(&format!("n{i}"));
                signer.sign(&mut a).await.unwrap();
                a
            }));
        }
        let mut answers = Vec::new();
        for h in handles {
            answers.push(h.await.unwrap());
        }
        assert!(
            answers.iter().any(|a| a.batch.as_ref().unwrap().size > 1),
            "some batching happened"
        );
        for a in &answers {
            assert!(verifier.verify(&public, a));
            let mut replayed = a.clone();
            replayed.request_nonce = "other".into();
            assert!(!verifier.verify(&public, &replayed), "nonce is covered");
            let mut flipped = a.clone();
            flipped.found = false;
            assert!(!verifier.verify(&public, &flipped));
            let mut unsigned = a.clone();
            unsigned.batch = None;
            assert!(!verifier.verify(&public, &unsigned));
        }
        let other = key();
        assert!(
            !verifier.verify(other.public_key().as_ref(), &answers[0]),
            "cache is per key"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_alone_is_signed_without_waiting_for_company() {
        let department_key = key();
        let signer = BatchSigner::start(Arc::clone(&department_key));
        let started = tokio::time::Instant::now();
        let mut a = answer("alone");
        signer.sign(&mut a).await.unwrap();
        // The clock is paused: any timer in the signer would have moved it.
        assert_eq!(tokio::time::Instant::now(), started, "the signer waited");
        assert_eq!(a.batch.as_ref().unwrap().size, 1);
        assert!(AnswerVerifier::default().verify(department_key.public_key().as_ref(), &a));
    }

    #[test]
    fn completions_are_signed_one_by_one() {
        let key = key();
        let mut request = CompleteVerificationRequest {
            department_id: "public-security".into(),
            ticket: "t1".into(),
            outcome: 1,
            ..Default::default()
        };
        assert!(!verify_completion(key.public_key().as_ref(), &request));
        sign_completion(&key, &mut request);
        assert!(verify_completion(key.public_key().as_ref(), &request));
        request.outcome = 2;
        assert!(!verify_completion(key.public_key().as_ref(), &request));
    }
}
