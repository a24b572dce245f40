//! RFC 6962 / 9162 Merkle tree hashing, kept incrementally, and its
//! inclusion and consistency proofs. A leaf: the audit log and the
//! departments' batch answer signatures both build on it.
//!
//! The frontier holds the roots of the perfect subtrees along the right edge
//! (one per set bit of the tree size), so an append costs O(log n) hashes and
//! the root is O(log n) more — and the frontier is all that must survive a
//! restart to go on appending.

use ring::digest::{Context, SHA256};

pub mod proof;

pub use proof::{
    consistency_proof, inclusion_proof, subtree_hash, verify_consistency, verify_inclusion,
    LeafHashes, ProofError, SubtreeSource,
};

pub type Hash = [u8; 32];

/// SHA-256 of the empty string: the root of the empty tree.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// SHA-256(0x00 || entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(entry);
    finish(ctx)
}

/// SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

fn finish(ctx: Context) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The right edge of a Merkle tree of `size` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// Perfect-subtree roots, largest (leftmost) first; one per set bit of `size`.
    subtrees: Vec<Hash>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        self.push_with_nodes(leaf, &mut Vec::new());
    }

    /// Appends a leaf and reports every perfect subtree it completes, as
    /// (level, index at that level, hash) — the leaf itself first — so they
    /// can be stored for proofs.
    pub fn push_with_nodes(&mut self, leaf: Hash, completed: &mut Vec<(u8, u64, Hash)>) {
        let mut hash = leaf;
        let mut index = self.size;
        let mut level = 0u8;
        completed.push((level, index, hash));
        // Each trailing one bit of the old size is a subtree of the height
        // the new one reaches: merge them as a binary counter carries.
        let mut carries = self.size.trailing_ones();
        while carries > 0 {
            // A set bit always has its subtree on the stack.
            let left = self.subtrees.pop().unwrap_or_default();
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            completed.push((level, index, hash));
            carries -= 1;
        }
        self.subtrees.push(hash);
        self.size += 1;
    }

    /// MTH of the whole tree: the subtrees folded from the right.
    pub fn root(&self) -> Hash {
        let mut iter = self.subtrees.iter().rev();
        let Some(last) = iter.next() else {
            return EMPTY_ROOT;
        };
        iter.fold(*last, |right, left| node_hash(left, &right))
    }

    /// size (8 bytes big-endian) then the subtree roots.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.subtrees.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for h in &self.subtrees {
            out.extend_from_slice(h);
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (size, rest) = bytes.split_first_chunk::<8>()?;
        let size = u64::from_be_bytes(*size);
        if rest.len() != 32 * size.count_ones() as usize {
            return None;
        }
        let subtrees = rest
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Some(Self { size, subtrees })
    }
}

/// MTH computed straight from RFC 6962 §2.1 (split at the largest power of
/// two below n). O(n); the reference the incremental form is tested against
/// and what offline verification of a small range uses.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Leaves and roots of the RFC 6962 reference test data
    /// (certificate-transparency merkle_tree_test).
    const RFC6962_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const RFC6962_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn rfc6962_test_vectors() {
        assert_eq!(
            hex::encode(Frontier::default().root()),
            hex::encode(EMPTY_ROOT)
        );
        assert_eq!(
            hex::encode(EMPTY_ROOT),
            hex::encode(ring::digest::digest(&SHA256, b""))
        );
        let mut frontier = Frontier::default();
        let mut leaves = Vec::new();
        for (leaf, expected_root) in RFC6962_LEAVES.iter().zip(RFC6962_ROOTS) {
            let leaf = leaf_hash(&hex::decode(leaf).unwrap());
            frontier.push(leaf);
            leaves.push(leaf);
            assert_eq!(hex::encode(frontier.root()), expected_root);
            assert_eq!(hex::encode(root_of(&leaves)), expected_root);
        }
    }

    proptest! {
        #[test]
        fn incremental_root_equals_naive_root_at_every_size(
            entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..70)
        ) {
            let mut frontier = Frontier::default();
            let mut leaves = Vec::new();
            for entry in &entries {
                let leaf = leaf_hash(entry);
                frontier.push(leaf);
                leaves.push(leaf);
                prop_assert_eq!(frontier.root(), root_of(&leaves));
                prop_assert_eq!(frontier.subtrees.len() as u32, frontier.size().count_ones());
            }
            let restored = Frontier::from_bytes(&frontier.to_bytes()).unwrap();
            prop_assert_eq!(&restored, &frontier);
        }

        #[test]
        fn completed_nodes_are_the_roots_of_their_perfect_ranges(n in 1usize..70) {
            let leaves: Vec<Hash> = (0..n as u64).map(|i| leaf_hash(&i.to_be_bytes())).collect();
            let mut frontier = Frontier::default();
            let mut nodes = Vec::new();
            for leaf in &leaves {
                frontier.push_with_nodes(*leaf, &mut nodes);
            }
            let mut per_level = [0usize; 8];
            for (level, index, hash) in nodes {
                let width = 1usize << level;
                let start = index as usize * width;
                prop_assert_eq!(hash, root_of(&leaves[start..start + width]));
                per_level[level as usize] += 1;
            }
            for (level, count) in per_level.iter().enumerate() {
                prop_assert_eq!(*count, n >> level, "every perfect subtree once");
            }
        }

        #[test]
        fn any_changed_leaf_changes_the_root(
            n in 1usize..40, at in 0usize..40, flip in 1u8..=255
        ) {
            let at = at % n;
            let entries: Vec<Vec<u8>> = (0..n).map(|i| (i as u32).to_be_bytes().to_vec()).collect();
            let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
            let mut tampered = entries.clone();
            tampered[at][3] ^= flip;
            let tampered: Vec<Hash> = tampered.iter().map(|e| leaf_hash(e)).collect();
            prop_assert_ne!(root_of(&leaves), root_of(&tampered));
        }

        #[test]
        fn corrupt_frontier_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Some(f) = Frontier::from_bytes(&bytes) {
                prop_assert_eq!(f.to_bytes(), bytes);
            }
        }
    }
}
