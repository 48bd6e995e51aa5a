//! Listing keys the way S3 does (pure): keys in UTF-8 byte order under a
//! prefix, keys sharing a delimiter after the prefix rolled up into one
//! common prefix, pages of at most `max_keys` entries (keys and common
//! prefixes counted together), and a marker to go on from.
//!
//! The store only has to answer one question, "the next keys after this
//! one that start with this prefix" (`KeyScan`); a common prefix is passed
//! over with one seek, however many keys it holds.

/// Above every byte of UTF-8 text: `p + [0xFF]` sorts after every key that
/// starts with `p`.
const PAST: u8 = 0xFF;

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// Only keys starting with this.
    pub prefix: String,
    /// Roll keys up at the first occurrence of this after the prefix.
    pub delimiter: Option<String>,
    /// Only entries after this key or common prefix (V1 marker, V2
    /// start-after or continuation token).
    pub after: Option<String>,
    /// The most entries in the page (0 is a valid, empty page).
    pub max_keys: usize,
}

/// One entry of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<T> {
    /// A key and what the store keeps for it.
    Key(String, T),
    /// A common prefix (ends with the delimiter).
    Prefix(String),
}

impl<T> Entry<T> {
    /// The key or the common prefix.
    pub fn name(&self) -> &str {
        match self {
            Entry::Key(key, _) => key,
            Entry::Prefix(prefix) => prefix,
        }
    }
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// Keys and common prefixes, in order.
    pub entries: Vec<Entry<T>>,
    /// Whether more entries follow; the next page starts after the last
    /// entry's name.
    pub truncated: bool,
}

/// The store's side of a listing: up to `limit` keys starting with
/// `prefix`, in order, strictly after `after` (bytes; may be no key).
pub trait KeyScan<T> {
    /// The error of the store.
    type Error;
    /// The next keys.
    fn scan(
        &mut self,
        prefix: &str,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(String, T)>, Self::Error>;
}

/// Where a scan resumes after `name` (a key, or a common prefix whose keys
/// are all passed over).
fn resume_after(name: &str, query: &ListQuery) -> Vec<u8> {
    let mut after = name.as_bytes().to_vec();
    if rolled_up(name, query).is_some_and(|prefix| prefix == name) {
        after.push(PAST);
    }
    after
}

/// The common prefix `key` rolls up into, if any.
fn rolled_up<'a>(key: &'a str, query: &ListQuery) -> Option<&'a str> {
    let delimiter = query.delimiter.as_deref().filter(|d| !d.is_empty())?;
    let rest = key.strip_prefix(query.prefix.as_str())?;
    let at = rest.find(delimiter)?;
    Some(&key[..query.prefix.len() + at + delimiter.len()])
}

/// One page of the listing `query` asks for.
pub fn list<T, S: KeyScan<T>>(store: &mut S, query: &ListQuery) -> Result<Page<T>, S::Error> {
    const BATCH: usize = 1000;
    if query.max_keys == 0 {
        // As S3 answers: nothing, and not truncated (a truncated page
        // without a token to go on would loop or stop its client).
        return Ok(Page {
            entries: Vec::new(),
            truncated: false,
        });
    }
    let mut entries: Vec<Entry<T>> = Vec::new();
    // Start at the prefix, or after the marker when it lies beyond it.
    let mut after: Vec<u8> = match &query.after {
        Some(marker) if marker.as_str() >= query.prefix.as_str() => resume_after(marker, query),
        _ => Vec::new(),
    };
    loop {
        let batch = store.scan(&query.prefix, &after, BATCH)?;
        let exhausted = batch.len() < BATCH;
        let mut seeked = false;
        for (key, value) in batch {
            if entries.len() == query.max_keys {
                return Ok(Page {
                    entries,
                    truncated: true,
                });
            }
            match rolled_up(&key, query) {
                Some(prefix) => {
                    let prefix = prefix.to_string();
                    after = resume_after(&prefix, query);
                    entries.push(Entry::Prefix(prefix));
                    seeked = true;
                    break;
                }
                None => {
                    after = key.as_bytes().to_vec();
                    entries.push(Entry::Key(key, value));
                }
            }
        }
        if seeked {
            continue;
        }
        if exhausted {
            return Ok(Page {
                entries,
                truncated: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    struct Keys(BTreeSet<String>, usize);

    impl KeyScan<()> for Keys {
        type Error = std::convert::Infallible;
        fn scan(
            &mut self,
            prefix: &str,
            after: &[u8],
            limit: usize,
        ) -> Result<Vec<(String, ())>, Self::Error> {
            self.1 += 1;
            Ok(self
                .0
                .iter()
                .filter(|k| k.starts_with(prefix) && k.as_bytes() > after)
                .take(limit)
                .map(|k| (k.clone(), ()))
                .collect())
        }
    }

    fn keys(names: &[&str]) -> Keys {
        Keys(names.iter().map(|s| s.to_string()).collect(), 0)
    }

    fn names(page: &Page<()>) -> Vec<&str> {
        page.entries.iter().map(Entry::name).collect()
    }

    fn query(prefix: &str, delimiter: Option<&str>, after: Option<&str>, max: usize) -> ListQuery {
        ListQuery {
            prefix: prefix.into(),
            delimiter: delimiter.map(str::to_string),
            after: after.map(str::to_string),
            max_keys: max,
        }
    }

    #[test]
    fn keys_under_a_prefix_come_in_byte_order() {
        let mut store = keys(&["b", "a/2", "a/1", "c", "ab"]);
        let page = list(&mut store, &query("a", None, None, 10)).unwrap();
        assert_eq!(names(&page), ["a/1", "a/2", "ab"]);
        assert!(!page.truncated);
    }

    #[test]
    fn keys_sharing_a_delimiter_roll_up_into_one_common_prefix() {
        let mut store = keys(&[
            "photos/2024/a",
            "photos/2024/b",
            "photos/2025/c",
            "photos/x",
            "readme",
        ]);
        let page = list(&mut store, &query("photos/", Some("/"), None, 10)).unwrap();
        assert_eq!(names(&page), ["photos/2024/", "photos/2025/", "photos/x"]);
        assert!(matches!(page.entries[0], Entry::Prefix(_)));
        let top = list(&mut store, &query("", Some("/"), None, 10)).unwrap();
        assert_eq!(names(&top), ["photos/", "readme"]);
    }

    #[test]
    fn pages_count_keys_and_prefixes_together_and_resume_after_the_last_entry() {
        let mut store = keys(&["a/1", "a/2", "b", "c/1", "d"]);
        let q = |after: Option<&str>| query("", Some("/"), after, 2);
        let first = list(&mut store, &q(None)).unwrap();
        assert_eq!(names(&first), ["a/", "b"]);
        assert!(first.truncated);
        let second = list(&mut store, &q(Some("b"))).unwrap();
        assert_eq!(names(&second), ["c/", "d"]);
        assert!(!second.truncated, "nothing after d");
        // Resuming after a common prefix passes over all its keys.
        let after_prefix = list(&mut store, &q(Some("a/"))).unwrap();
        assert_eq!(names(&after_prefix), ["b", "c/"]);
    }

    #[test]
    fn a_full_page_with_nothing_after_it_is_not_truncated() {
        let mut store = keys(&["a", "b"]);
        let page = list(&mut store, &query("", None, None, 2)).unwrap();
        assert_eq!(names(&page), ["a", "b"]);
        assert!(!page.truncated);
    }

    #[test]
    fn zero_max_keys_is_an_empty_page_never_truncated() {
        for held in [&["a"][..], &[]] {
            let mut store = keys(held);
            let page = list(&mut store, &query("", None, None, 0)).unwrap();
            assert!(page.entries.is_empty());
            assert!(!page.truncated);
        }
    }

    #[test]
    fn a_marker_before_the_prefix_starts_at_the_prefix() {
        let mut store = keys(&["a", "m/1", "m/2", "z"]);
        let page = list(&mut store, &query("m/", None, Some("b"), 10)).unwrap();
        assert_eq!(names(&page), ["m/1", "m/2"]);
    }

    #[test]
    fn a_prefix_holding_many_keys_costs_one_seek_not_a_scan_of_them() {
        let many: Vec<String> = (0..5000).map(|i| format!("big/{i:05}")).collect();
        let mut store = Keys(many.into_iter().chain(["small".to_string()]).collect(), 0);
        let page = list(&mut store, &query("", Some("/"), None, 10)).unwrap();
        assert_eq!(names(&page), ["big/", "small"]);
        assert!(store.1 <= 3, "{} scans", store.1);
    }

    #[test]
    fn every_key_is_listed_exactly_once_across_pages() {
        let all: Vec<String> = (0..2500)
            .map(|i| format!("dir{}/key {i} +&=ü", i % 7))
            .collect();
        let mut store = Keys(all.iter().cloned().collect(), 0);
        for delimiter in [None, Some("/")] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = list(&mut store, &query("", delimiter, after.as_deref(), 333)).unwrap();
                seen.extend(page.entries.iter().map(|e| e.name().to_string()));
                if !page.truncated {
                    break;
                }
                after = Some(page.entries.last().unwrap().name().to_string());
            }
            let expected: Vec<String> = match delimiter {
                None => store.0.iter().cloned().collect(),
                Some(_) => (0..7).map(|d| format!("dir{d}/")).collect(),
            };
            assert_eq!(seen, expected);
        }
    }
}
