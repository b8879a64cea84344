//! The hash index of one shard: key hash -> node slot, by open addressing.
//!
//! Linear probing over 8-byte entries (the low 32 bits of the key's hash as a tag, and the node
//! slot), so a lookup reads one run of adjacent entries (usually one cache line) and then the
//! node, with no separate control bytes to load first. Deletion shifts the following entries
//! back (no tombstones), and the table doubles past 5/8 load. The home position comes from the
//! tag alone, so growing never needs the keys.

const EMPTY: u32 = u32::MAX;
const MIN_CAPACITY: usize = 8;

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Entry {
    tag: u32,
    idx: u32,
}

const VACANT: Entry = Entry { tag: 0, idx: EMPTY };

/// An open-addressing map from a 32-bit hash tag to a `u32` slot.
pub(crate) struct Index {
    entries: Box<[Entry]>,
    mask: usize,
    len: usize,
}

impl Index {
    pub(crate) fn new() -> Self {
        Index {
            entries: Box::default(),
            mask: 0,
            len: 0,
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Bytes allocated.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<Entry>()
    }

    /// The slot stored under `tag` for which `eq(slot)` holds.
    #[inline]
    pub(crate) fn find(&self, tag: u32, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.entries.is_empty() {
            return None;
        }
        let mut pos = tag as usize & self.mask;
        loop {
            let e = self.entries[pos];
            if e.idx == EMPTY {
                return None;
            }
            if e.tag == tag && eq(e.idx) {
                return Some(e.idx);
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Stores `idx` under `tag`; the caller knows it is not there yet.
    #[inline]
    pub(crate) fn insert(&mut self, tag: u32, idx: u32) {
        debug_assert_ne!(idx, EMPTY);
        if (self.len + 1) * 8 > self.entries.len() * 5 {
            self.grow();
        }
        self.place(Entry { tag, idx });
        self.len += 1;
    }

    fn place(&mut self, e: Entry) {
        let mut pos = e.tag as usize & self.mask;
        while self.entries[pos].idx != EMPTY {
            pos = (pos + 1) & self.mask;
        }
        self.entries[pos] = e;
    }

    #[cold]
    fn grow(&mut self) {
        let cap = (self.entries.len() * 2).max(MIN_CAPACITY);
        let old = std::mem::replace(&mut self.entries, vec![VACANT; cap].into_boxed_slice());
        self.mask = cap - 1;
        for e in old.iter().filter(|e| e.idx != EMPTY) {
            self.place(*e);
        }
    }

    /// Removes the entry of slot `idx` stored under `tag`; `false` when there is none.
    pub(crate) fn remove(&mut self, tag: u32, idx: u32) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let mask = self.mask;
        let mut pos = tag as usize & mask;
        loop {
            let e = self.entries[pos];
            if e.idx == EMPTY {
                return false;
            }
            if e.idx == idx {
                break;
            }
            pos = (pos + 1) & mask;
        }
        // Backward-shift deletion: pull later entries of the run into the hole when their home
        // position does not lie cyclically between the hole and where they sit.
        let mut hole = pos;
        let mut j = (pos + 1) & mask;
        loop {
            let e = self.entries[j];
            if e.idx == EMPTY {
                break;
            }
            let home = e.tag as usize & mask;
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.entries[hole] = e;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.entries[hole] = VACANT;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A tiny deterministic generator (xorshift) so the test needs no crate.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn matches_a_hash_map_under_random_inserts_and_removes() {
        let mut index = Index::new();
        let mut model: HashMap<u32, u32> = HashMap::new(); // slot -> tag
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..200_000u32 {
            let r = next(&mut rng);
            // Few distinct tags: many collisions and long runs.
            let tag = (r % 64) as u32 * 0x0101_0101;
            let slot = (r >> 32) as u32 % 5_000;
            if let Some(&t) = model.get(&slot) {
                assert_eq!(index.find(t, |i| i == slot), Some(slot), "step {step}");
                if r & 1 == 0 {
                    assert!(index.remove(t, slot));
                    model.remove(&slot);
                    assert_eq!(index.find(t, |i| i == slot), None);
                }
            } else {
                assert_eq!(index.find(tag, |i| i == slot), None);
                index.insert(tag, slot);
                model.insert(slot, tag);
            }
            assert_eq!(index.len(), model.len());
        }
        for (&slot, &tag) in &model {
            assert_eq!(index.find(tag, |i| i == slot), Some(slot));
        }
        assert!(index.len() * 8 <= index.capacity() * 5);
    }

    #[test]
    fn wraps_around_the_end() {
        let mut index = Index::new();
        let mask = 7u32;
        for i in 0..4 {
            index.insert(mask, i); // all home at the last position, runs wrap to the start
        }
        assert!(index.remove(mask, 0));
        for i in 1..4 {
            assert_eq!(index.find(mask, |s| s == i), Some(i));
        }
        assert!(!index.remove(mask, 0));
        assert!(!index.remove(3, 99));
    }
}
