//! Prefix caching: a pool remembers its full blocks of committed positions by their content, so
//! that a new sequence whose tokens start the same way takes those blocks instead of computing
//! them again (the idea of vLLM's automatic prefix caching and SGLang's radix cache). Chat
//! requests share their template's system turn; a conversation resends its history every turn.
//!
//! A block's key is its tokens and the block before it, so that a key names a whole prefix. A
//! lookup checks the stored tokens and the parent block, not only a hash: a block is taken only
//! when the prefix is exactly the same. Blocks that no table holds stay cached, *parked*, until
//! the pool needs them for new positions (before it allocates more memory) and takes the one
//! parked longest.
//!
//! Taking a cached block changes no result: a position's keys and values are a function of the
//! tokens up to it, and the kernels give every row the same bits whatever rows share its
//! forward.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use super::pool::BLOCK_SIZE;

/// What a cached block holds: the tokens of its positions after those of `parent`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    hash: u64,
    /// Never reused: a block id cached anew gets a new serial, so the children of what it
    /// held before never match it.
    serial: u64,
    /// The block holding the positions before this one's, and its serial (`None` for a
    /// sequence's first).
    parent: Option<(u32, u64)>,
    tokens: [u32; BLOCK_SIZE],
}

/// The cached blocks of one pool, by content, and the order in which parked ones go.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrefixIndex {
    by_hash: HashMap<u64, u32>,
    /// Per block id: its entry when cached.
    entries: Vec<Option<Entry>>,
    /// Parked cached blocks (no table holds them), oldest first, by the tick they were parked.
    parked: BTreeMap<u64, u32>,
    /// Per block id: its key in `parked` while parked.
    parked_at: Vec<Option<u64>>,
    tick: u64,
    serials: u64,
}

fn key(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl PrefixIndex {
    fn grow(&mut self, id: u32) {
        let n = id as usize + 1;
        if self.entries.len() < n {
            self.entries.resize(n, None);
            self.parked_at.resize(n, None);
        }
    }

    /// Whether block `id` is cached.
    pub(crate) fn is_cached(&self, id: u32) -> bool {
        self.entries.get(id as usize).is_some_and(Option::is_some)
    }

    /// Blocks parked: cached, held by no table.
    pub(crate) fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Cached blocks, held or parked.
    pub(crate) fn cached(&self) -> usize {
        self.by_hash.len()
    }

    /// The cached blocks holding the longest prefix of `tokens` made of whole blocks, in order.
    pub(crate) fn lookup(&self, tokens: &[u32]) -> Vec<u32> {
        let mut found = Vec::new();
        // The hash of the prefix so far, and the block that ends it with its serial.
        let mut parent: Option<(u64, (u32, u64))> = None;
        for block in tokens.chunks_exact(BLOCK_SIZE) {
            let hash = key(parent.map(|p| p.0), block);
            let Some(&id) = self.by_hash.get(&hash) else {
                break;
            };
            let e = self.entries[id as usize]
                .as_ref()
                .expect("indexed blocks have entries");
            // Exactly this prefix, not a hash collision.
            if e.parent != parent.map(|p| p.1) || e.tokens != block {
                break;
            }
            found.push(id);
            parent = Some((hash, (id, e.serial)));
        }
        found
    }

    /// Caches block `id` as holding `tokens` after the positions of `parent` (itself cached).
    /// Returns false, caching nothing, when the parent is not cached or the same prefix is
    /// already cached in another block.
    pub(crate) fn insert(&mut self, id: u32, parent: Option<u32>, tokens: &[u32]) -> bool {
        let (parent_hash, parent) = match parent {
            None => (None, None),
            Some(p) => match self.entries.get(p as usize).and_then(Option::as_ref) {
                Some(e) => (Some(e.hash), Some((p, e.serial))),
                None => return false,
            },
        };
        let hash = key(parent_hash, tokens);
        if self.by_hash.contains_key(&hash) {
            return false;
        }
        debug_assert!(!self.is_cached(id), "block {id} is cached already");
        self.grow(id);
        self.serials += 1;
        self.by_hash.insert(hash, id);
        self.entries[id as usize] = Some(Entry {
            hash,
            serial: self.serials,
            parent,
            tokens: tokens.try_into().expect("a whole block of tokens"),
        });
        true
    }

    /// Parks cached block `id`, which no table holds any more.
    pub(crate) fn park(&mut self, id: u32) {
        self.tick += 1;
        self.parked.insert(self.tick, id);
        self.parked_at[id as usize] = Some(self.tick);
    }

    /// Takes parked block `id` back into use (a table holds it again).
    pub(crate) fn unpark(&mut self, id: u32) {
        let at = self.parked_at[id as usize]
            .take()
            .expect("the block is parked");
        self.parked.remove(&at);
    }

    /// Forgets the block parked longest and returns it, to be written anew.
    pub(crate) fn evict_oldest(&mut self) -> Option<u32> {
        let (_, id) = self.parked.pop_first()?;
        self.parked_at[id as usize] = None;
        let e = self.entries[id as usize]
            .take()
            .expect("parked blocks are cached");
        self.by_hash.remove(&e.hash);
        Some(id)
    }

    /// Checks that every parked block is cached and indexed under its own hash (for tests).
    pub(crate) fn check(&self) -> Result<(), String> {
        for (&hash, &id) in &self.by_hash {
            match self.entries.get(id as usize).and_then(Option::as_ref) {
                Some(e) if e.hash == hash => {}
                _ => return Err(format!("block {id} is indexed but holds another entry")),
            }
        }
        for (&at, &id) in &self.parked {
            if self.parked_at[id as usize] != Some(at) || !self.is_cached(id) {
                return Err(format!("parked block {id} is not cached, or parked twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(first: u32) -> Vec<u32> {
        (first..first + BLOCK_SIZE as u32).collect()
    }

    #[test]
    fn a_lookup_finds_the_longest_cached_chain_of_whole_blocks() {
        let mut ix = PrefixIndex::default();
        let (a, b, c) = (block(0), block(100), block(200));
        assert!(ix.insert(7, None, &a));
        assert!(ix.insert(3, Some(7), &b));
        // The same tokens after another prefix are another key.
        assert!(ix.insert(5, None, &b));
        let seq: Vec<u32> = [a.clone(), b.clone(), c.clone()].concat();
        assert_eq!(ix.lookup(&seq), [7, 3]);
        assert_eq!(
            ix.lookup(&seq[..2 * BLOCK_SIZE - 1]),
            [7],
            "whole blocks only"
        );
        assert_eq!(ix.lookup(&[b.clone(), a.clone()].concat()), [5]);
        assert_eq!(ix.lookup(&c), Vec::<u32>::new());
        // The same prefix twice is cached once; a parent that is not cached caches nothing.
        assert!(!ix.insert(9, None, &a));
        assert!(!ix.insert(9, Some(11), &c));
        assert_eq!(ix.cached(), 3);
        ix.check().unwrap();
    }

    #[test]
    fn parked_blocks_go_oldest_first_and_are_forgotten() {
        let mut ix = PrefixIndex::default();
        let (a, b) = (block(0), block(50));
        ix.insert(0, None, &a);
        ix.insert(1, Some(0), &b);
        // Released last block first, as a table is truncated.
        ix.park(1);
        ix.park(0);
        assert_eq!(ix.parked(), 2);
        ix.unpark(0);
        ix.park(0);
        assert_eq!(ix.evict_oldest(), Some(1));
        assert!(!ix.is_cached(1));
        let seq = [a.clone(), b.clone()].concat();
        assert_eq!(ix.lookup(&seq), [0]);
        assert_eq!(ix.evict_oldest(), Some(0));
        assert_eq!(ix.evict_oldest(), None);
        assert_eq!(ix.lookup(&seq), Vec::<u32>::new());
        ix.check().unwrap();
    }

    #[test]
    fn a_reused_parent_id_does_not_lead_to_its_old_children() {
        let mut ix = PrefixIndex::default();
        let (a, b, x) = (block(0), block(30), block(60));
        ix.insert(0, None, &a);
        ix.insert(1, Some(0), &b);
        ix.park(1);
        ix.park(0);
        // Block 1 is evicted first (parked first); then block 0, rewritten with other tokens.
        assert_eq!(ix.evict_oldest(), Some(1));
        assert_eq!(ix.evict_oldest(), Some(0));
        ix.insert(0, None, &x);
        ix.insert(2, Some(0), &b);
        // `a` then `b` is gone; `x` then `b` is found.
        assert_eq!(ix.lookup(&[a, b.clone()].concat()), Vec::<u32>::new());
        assert_eq!(ix.lookup(&[x, b].concat()), [0, 2]);
        ix.check().unwrap();
    }
}
