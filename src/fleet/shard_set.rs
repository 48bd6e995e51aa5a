//! A set of shard indices as a bitset: 128 bytes for 1,000 shards, where
//! a B-tree set of the same shards takes about ten times more and is
//! slower to build; the control loop holds one per blob.

/// Shards (0..n) as bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ShardSet {
    words: Vec<u64>,
    len: usize,
}

impl ShardSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `shard`; true when it was not there.
    pub fn insert(&mut self, shard: u16) -> bool {
        let (word, bit) = (usize::from(shard) / 64, shard % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        let added = self.words[word] & mask == 0;
        self.words[word] |= mask;
        self.len += usize::from(added);
        added
    }

    /// Whether `shard` is in the set.
    pub fn contains(&self, shard: &u16) -> bool {
        let (word, bit) = (usize::from(*shard) / 64, shard % 64);
        self.words.get(word).is_some_and(|w| w & (1u64 << bit) != 0)
    }

    /// How many shards the set holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shards, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.words.iter().enumerate().flat_map(|(i, word)| {
            (0..64u16)
                .filter(move |bit| word & (1u64 << bit) != 0)
                .map(move |bit| i as u16 * 64 + bit)
        })
    }
}

impl FromIterator<u16> for ShardSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut set = ShardSet::new();
        for shard in iter {
            set.insert(shard);
        }
        set
    }
}

impl<const N: usize> From<[u16; N]> for ShardSet {
    fn from(shards: [u16; N]) -> Self {
        shards.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_set_counts_each_shard_once_and_lists_them_in_order() {
        let mut set = ShardSet::new();
        assert!(set.is_empty());
        for shard in [999, 0, 64, 63, 64] {
            set.insert(shard);
        }
        assert_eq!(set.len(), 4);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 63, 64, 999]);
        assert!(set.contains(&63) && !set.contains(&62) && !set.contains(&1000));
        assert_eq!(
            set,
            ShardSet::from([64, 0, 999, 63]),
            "equal whatever the order of insertion"
        );
    }
}
