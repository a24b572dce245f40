//! RFC 6962 / 9162 inclusion and consistency proofs: built from any source of
//! subtree hashes (the sled store keeps every perfect subtree's root, so a
//! proof is O(log² n) lookups), and verified with the RFC 9162 algorithms.

use thiserror::Error;

use super::{node_hash, Hash, EMPTY_ROOT};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error("tree size {size} is beyond the log's {available}")]
    BeyondLog { size: u64, available: u64 },
    #[error("node store: {0}")]
    Store(String),
}

/// Where the hashes of perfect subtrees come from.
pub trait SubtreeSource {
    /// Root of the perfect subtree of `2^level` leaves starting at leaf
    /// `index << level`.
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, ProofError>;
}

/// Leaf hashes held in memory (a batch, a test tree): perfect subtrees are
/// computed from them.
pub struct LeafHashes<'a>(pub &'a [Hash]);

impl SubtreeSource for LeafHashes<'_> {
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        let width = 1usize.checked_shl(u32::from(level)).unwrap_or(usize::MAX);
        usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(width))
            .and_then(|start| self.0.get(start..start.checked_add(width)?))
            .map(super::root_of)
            .ok_or_else(|| ProofError::Store("no such subtree".into()))
    }
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D\[start:end\]).
pub fn subtree_hash<S: SubtreeSource + ?Sized>(
    source: &S,
    start: u64,
    end: u64,
) -> Result<Hash, ProofError> {
    let n = end - start;
    if n == 0 {
        return Ok(EMPTY_ROOT);
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return source.perfect(n.trailing_zeros() as u8, start / n);
    }
    let k = split_point(n);
    let left = subtree_hash(source, start, start + k)?;
    let right = subtree_hash(source, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// PATH(index, D\[0:size\]) of RFC 6962 §2.1.1.
pub fn inclusion_proof<S: SubtreeSource + ?Sized>(
    source: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    path(source, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path<S: SubtreeSource + ?Sized>(
    source: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(source, m, start, start + k, out)?;
        out.push(subtree_hash(source, start + k, end)?);
    } else {
        path(source, m - k, start + k, end, out)?;
        out.push(subtree_hash(source, start, start + k)?);
    }
    Ok(())
}

/// PROOF(old, D\[0:new\]) of RFC 6962 §2.1.2.
pub fn consistency_proof<S: SubtreeSource + ?Sized>(
    source: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError> {
    if old > new {
        return Err(ProofError::SizesOutOfOrder { old, new });
    }
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(source, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof<S: SubtreeSource + ?Sized>(
    source: &S,
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(subtree_hash(source, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(source, m, start, start + k, complete, out)?;
        out.push(subtree_hash(source, start + k, end)?);
    } else {
        subproof(source, m - k, start + k, end, false, out)?;
        out.push(subtree_hash(source, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.3.2.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// RFC 9162 §2.1.4.2.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    let mut proof: Vec<Hash> = proof.to_vec();
    if old.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &fr == old_root && &sr == new_root
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, root_of};
    use proptest::prelude::*;

    /// Leaf hashes of a test tree.
    struct Leaves(Vec<Hash>);

    impl SubtreeSource for Leaves {
        fn perfect(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
            LeafHashes(&self.0).perfect(level, index)
        }
    }

    fn leaves(n: usize) -> Leaves {
        Leaves(
            (0..n)
                .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
                .collect(),
        )
    }

    #[test]
    fn rfc6962_reference_inclusion_and_consistency_shapes() {
        // The 7-leaf tree of RFC 6962 §2.1.3: PATH(0) = [b, h, l]-shaped, 3 hashes;
        // PATH(3) = [c, g, l]; PATH(4) = [f, j, k]; PATH(6) = [i, k].
        let t = leaves(7);
        assert_eq!(inclusion_proof(&t, 0, 7).unwrap().len(), 3);
        assert_eq!(inclusion_proof(&t, 6, 7).unwrap().len(), 2);
        // PROOF(3, D[7]) = [c, d, g, l]; PROOF(4, D[7]) = [l]; PROOF(6, D[7]) = [i, j, k].
        assert_eq!(consistency_proof(&t, 3, 7).unwrap().len(), 4);
        assert_eq!(consistency_proof(&t, 4, 7).unwrap().len(), 1);
        assert_eq!(consistency_proof(&t, 6, 7).unwrap().len(), 3);
    }

    proptest! {
        #[test]
        fn inclusion_proofs_verify_and_wrong_ones_do_not(n in 1usize..80, i in 0usize..80, flip in 0usize..8) {
            let i = i % n;
            let t = leaves(n);
            let root = root_of(&t.0);
            let proof = inclusion_proof(&t, i as u64, n as u64).unwrap();
            prop_assert!(verify_inclusion(i as u64, n as u64, &t.0[i], &proof, &root));
            // Another leaf, or a damaged proof, must not verify.
            let other = (i + 1) % n;
            if other != i {
                prop_assert!(!verify_inclusion(i as u64, n as u64, &t.0[other], &proof, &root));
            }
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let at = flip % bad.len();
                bad[at][0] ^= 1;
                prop_assert!(!verify_inclusion(i as u64, n as u64, &t.0[i], &bad, &root));
            }
        }

        #[test]
        fn consistency_proofs_verify_between_any_two_sizes(n in 1usize..80, m in 0usize..80) {
            let m = m % (n + 1);
            let t = leaves(n);
            let old_root = root_of(&t.0[..m]);
            let new_root = root_of(&t.0);
            let proof = consistency_proof(&t, m as u64, n as u64).unwrap();
            prop_assert!(verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof));
            if m > 0 && m < n {
                // A rewritten history is not consistent.
                let mut rewritten = t.0.clone();
                rewritten[m - 1][5] ^= 0x40;
                let forged_old = root_of(&rewritten[..m]);
                prop_assert!(!verify_consistency(m as u64, n as u64, &forged_old, &new_root, &proof));
            }
        }
    }
}
