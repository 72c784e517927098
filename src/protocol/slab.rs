//! `SlabMap`: a map whose values live in a slab and whose ordered index holds only their slot
//! numbers. It behaves like a `BTreeMap` (iteration in key order, so everything built from it stays
//! deterministic), but an insert or a removal moves a few bytes of index instead of shifting whole
//! records inside B-tree nodes. Records and held entities are 100-150 bytes, and an entity handed
//! off is removed from one map and inserted into another every time it crosses a border: with the
//! values in the B-tree those shifts were a tenth of a handoff's cost.

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct SlabMap<K, V> {
    index: BTreeMap<K, u32>,
    slots: Vec<Option<V>>,
    /// Empty slots, reused last-freed first, so the slab stays as dense as the map is full.
    free: Vec<u32>,
}

impl<K, V> Default for SlabMap<K, V> {
    fn default() -> Self {
        Self { index: BTreeMap::new(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<K: Ord + Copy, V> SlabMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.index.get(key).map(|&slot| self.slot(slot))
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let slot = *self.index.get(key)?;
        Some(self.slot_mut(slot))
    }

    /// Inserts `value` under `key`, giving back the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(&slot) = self.index.get(&key) {
            return self.slots[slot as usize].replace(value);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(value);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("a slab map holds fewer than 2^32 values");
                self.slots.push(Some(value));
                slot
            }
        };
        self.index.insert(key, slot);
        None
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.index.remove(key)?;
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
    }

    /// Entries in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter { index: self.index.iter(), slots: &self.slots }
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + '_ {
        self.index.keys()
    }

    /// Values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + '_ {
        self.index.values().map(|&slot| self.slot(slot))
    }

    /// Values in slab order, which is deterministic but not key order: for passes over every
    /// value whose result does not depend on the order.
    pub fn values_unordered(&self) -> impl Iterator<Item = &V> + '_ {
        self.slots.iter().flatten()
    }

    /// Values in slab order, mutably (see `values_unordered`).
    pub fn values_unordered_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.slots.iter_mut().flatten()
    }

    fn slot(&self, slot: u32) -> &V {
        self.slots[slot as usize].as_ref().expect("indexed slots are full")
    }

    fn slot_mut(&mut self, slot: u32) -> &mut V {
        self.slots[slot as usize].as_mut().expect("indexed slots are full")
    }
}

impl<K: Ord + Copy, V> std::ops::Index<&K> for SlabMap<K, V> {
    type Output = V;

    fn index(&self, key: &K) -> &V {
        self.get(key).expect("key is in the map")
    }
}

impl<'a, K: Ord + Copy, V> IntoIterator for &'a SlabMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A `SlabMap`'s entries in key order.
pub struct Iter<'a, K, V> {
    index: std::collections::btree_map::Iter<'a, K, u32>,
    slots: &'a [Option<V>],
}

impl<'a, K, V> Iter<'a, K, V> {
    fn entry(&self, (k, &slot): (&'a K, &'a u32)) -> (&'a K, &'a V) {
        (k, self.slots[slot as usize].as_ref().expect("indexed slots are full"))
    }
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let e = self.index.next()?;
        Some(self.entry(e))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.index.size_hint()
    }
}

impl<K, V> DoubleEndedIterator for Iter<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let e = self.index.next_back()?;
        Some(self.entry(e))
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

impl<K: Ord + Copy, V> Extend<(K, V)> for SlabMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Ord + Copy, V> FromIterator<(K, V)> for SlabMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        map.extend(iter);
        map
    }
}

impl<K: Ord + Copy, V: PartialEq> PartialEq for SlabMap<K, V> {
    /// Equal when they map the same keys to equal values, wherever the values sit in the slab.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_behaves_like_an_ordered_map_under_a_mix_of_inserts_and_removals() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut slab, mut model) = (SlabMap::new(), BTreeMap::new());
        for step in 0..20_000u32 {
            let key: u16 = rng.random_range(0..500);
            match rng.random_range(0..3) {
                0 => assert_eq!(slab.remove(&key), model.remove(&key), "step {step}: remove {key}"),
                _ => assert_eq!(slab.insert(key, step), model.insert(key, step), "step {step}: insert {key}"),
            }
            assert_eq!(slab.get(&key), model.get(&key));
        }
        assert_eq!(slab.len(), model.len());
        assert!(slab.iter().eq(model.iter()), "iteration is in key order");
        let mut unordered: Vec<u32> = slab.values_unordered().copied().collect();
        unordered.sort();
        let mut values: Vec<u32> = model.values().copied().collect();
        values.sort();
        assert_eq!(unordered, values);
        assert!(slab.slots.len() <= 500, "freed slots are reused: {} slots for {} keys", slab.slots.len(), slab.len());
    }
}
