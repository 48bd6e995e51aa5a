//! The ordered key-value stores the S3 index runs on: five tables of byte
//! keys and byte values, changed only in transactions. Embedded (redb, one
//! file, one writer) or PostgreSQL (`postgres_kv`, for several gateways;
//! serializable transactions, retried on conflict). The index's logic is
//! written once against `Txn`.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::index::IndexError;

/// The tables of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// Bucket name -> bucket record.
    Buckets,
    /// Bucket, NUL, key -> object record.
    Objects,
    /// Upload id -> upload record.
    Uploads,
    /// Upload id, NUL, part number (big-endian) -> part record.
    Parts,
    /// Blob id -> references.
    Refs,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 5] = [
        Table::Buckets,
        Table::Objects,
        Table::Uploads,
        Table::Parts,
        Table::Refs,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Buckets => "buckets",
            Table::Objects => "objects",
            Table::Uploads => "uploads",
            Table::Parts => "parts",
            Table::Refs => "blob_refs",
        }
    }

    /// Its number (PostgreSQL keeps every table in one).
    pub fn number(self) -> i16 {
        self as i16
    }
}

/// Keys and values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One transaction's view of the tables.
pub trait Txn {
    /// The value at `key`.
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError>;
    /// Sets the value at `key`.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), IndexError>;
    /// Removes `key`.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), IndexError>;
    /// Up to `limit` entries whose key starts with `prefix`, in key order,
    /// strictly after `after` when given.
    fn scan(
        &mut self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, IndexError>;
}

/// A store of the tables.
pub trait KvStore: Send + Sync {
    /// Runs `body` in one transaction: a write transaction committed
    /// durably before this returns (`write`), or a consistent snapshot.
    /// `body` may run more than once (a store that detects a conflict runs
    /// it again); an error from it rolls the transaction back.
    fn transact(
        &self,
        write: bool,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), IndexError>,
    ) -> Result<(), IndexError>;
}

fn store(e: impl std::fmt::Display) -> IndexError {
    IndexError::Store(e.to_string())
}

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// The embedded store: one redb file.
pub struct RedbKv {
    db: Database,
}

impl RedbKv {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(store)?;
        }
        let db = Database::create(path).map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        for table in Table::ALL {
            txn.open_table(definition(table)).map_err(store)?;
        }
        txn.commit().map_err(store)?;
        Ok(Self { db })
    }
}

/// The successor of every key starting with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn scan_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Entries, IndexError> {
    use std::ops::Bound;
    let lower = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let mut found = Vec::new();
    for row in table
        .range::<&[u8]>((lower, Bound::Unbounded))
        .map_err(store)?
    {
        let (k, v) = row.map_err(store)?;
        if !k.value().starts_with(prefix) || found.len() == limit {
            break;
        }
        found.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(found)
}

fn get_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    key: &[u8],
) -> Result<Option<Vec<u8>>, IndexError> {
    Ok(table.get(key).map_err(store)?.map(|v| v.value().to_vec()))
}

struct RedbWrite<'a>(&'a redb::WriteTransaction);

impl Txn for RedbWrite<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        get_in(&self.0.open_table(definition(table)).map_err(store)?, key)
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), IndexError> {
        let mut t = self.0.open_table(definition(table)).map_err(store)?;
        t.insert(key, value).map_err(store)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), IndexError> {
        let mut t = self.0.open_table(definition(table)).map_err(store)?;
        t.remove(key).map_err(store)?;
        Ok(())
    }

    fn scan(
        &mut self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, IndexError> {
        let t = self.0.open_table(definition(table)).map_err(store)?;
        scan_table(&t, prefix, after, limit)
    }
}

struct RedbRead(redb::ReadTransaction);

impl Txn for RedbRead {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        get_in(&self.0.open_table(definition(table)).map_err(store)?, key)
    }

    fn put(&mut self, _: Table, _: &[u8], _: &[u8]) -> Result<(), IndexError> {
        Err(IndexError::Store("a write in a read transaction".into()))
    }

    fn delete(&mut self, _: Table, _: &[u8]) -> Result<(), IndexError> {
        Err(IndexError::Store("a write in a read transaction".into()))
    }

    fn scan(
        &mut self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, IndexError> {
        let t = self.0.open_table(definition(table)).map_err(store)?;
        scan_table(&t, prefix, after, limit)
    }
}

impl KvStore for RedbKv {
    fn transact(
        &self,
        write: bool,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        if write {
            let txn = self.db.begin_write().map_err(store)?;
            body(&mut RedbWrite(&txn))?;
            txn.commit().map_err(store)
        } else {
            let txn = self.db.begin_read().map_err(store)?;
            body(&mut RedbRead(txn))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_prefix_is_the_next_key_after_all_its_extensions() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xFF]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
