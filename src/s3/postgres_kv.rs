//! The index's tables in PostgreSQL, for several gateways sharing one
//! index: one table `redstuff_s3_kv (tbl, key, value)`, every transaction
//! SERIALIZABLE and run again when PostgreSQL reports a conflict (another
//! gateway changed what it read), so the index behaves as with one writer.

use std::sync::Mutex;

use postgres::error::SqlState;
use postgres::{Client, IsolationLevel, NoTls};

use super::index::IndexError;
use super::kv::{prefix_end, Entries, KvStore, Table, Txn};

/// Attempts of a transaction that keeps conflicting.
const ATTEMPTS: u32 = 60;

/// A pause before attempt `attempt` again: random, up to twice the last
/// one's bound, at most 200 ms, so conflicting writers drift apart.
fn backoff(attempt: u32) -> std::time::Duration {
    let bound_ms = (1u64 << attempt.min(8)).min(200);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos() as u64);
    let mut x = nanos ^ 0x9E37_79B9_7F4A_7C15 ^ (u64::from(attempt) << 32);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::time::Duration::from_micros(x % (bound_ms * 1000 + 1))
}

fn store(e: impl std::fmt::Display) -> IndexError {
    IndexError::Store(e.to_string())
}

/// The PostgreSQL store: one connection, used by one transaction at a time.
pub struct PostgresKv {
    client: Mutex<Client>,
}

impl PostgresKv {
    /// Connects to `url` (`postgresql://user:password@host:port/db`, TLS
    /// off: inside a cluster network or on loopback) and creates the table
    /// when missing.
    pub fn connect(url: &str) -> Result<Self, IndexError> {
        let mut client = Client::connect(url, NoTls).map_err(store)?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS redstuff_s3_kv (
                     tbl smallint NOT NULL,
                     key bytea NOT NULL,
                     value bytea NOT NULL,
                     PRIMARY KEY (tbl, key))",
            )
            .map_err(store)?;
        Ok(Self {
            client: Mutex::new(client),
        })
    }
}

struct PgTxn<'a, 'b>(&'a mut postgres::Transaction<'b>);

impl Txn for PgTxn<'_, '_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        let row = self
            .0
            .query_opt(
                "SELECT value FROM redstuff_s3_kv WHERE tbl = $1 AND key = $2",
                &[&table.number(), &key],
            )
            .map_err(conflict_or_store)?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), IndexError> {
        self.0
            .execute(
                "INSERT INTO redstuff_s3_kv (tbl, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                &[&table.number(), &key, &value],
            )
            .map_err(conflict_or_store)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), IndexError> {
        self.0
            .execute(
                "DELETE FROM redstuff_s3_kv WHERE tbl = $1 AND key = $2",
                &[&table.number(), &key],
            )
            .map_err(conflict_or_store)?;
        Ok(())
    }

    fn scan(
        &mut self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, IndexError> {
        let lower: Vec<u8> = match after {
            Some(after) if after >= prefix => after.to_vec(),
            _ => prefix.to_vec(),
        };
        let inclusive = !matches!(after, Some(after) if after >= prefix);
        let upper = prefix_end(prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .0
            .query(
                "SELECT key, value FROM redstuff_s3_kv
                 WHERE tbl = $1
                   AND (key > $2 OR ($3 AND key = $2))
                   AND ($4::bytea IS NULL OR key < $4)
                 ORDER BY key LIMIT $5",
                &[&table.number(), &lower, &inclusive, &upper, &limit],
            )
            .map_err(conflict_or_store)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
            .collect())
    }
}

/// A conflict is reported as `Conflict` so the transaction runs again.
fn conflict_or_store(e: postgres::Error) -> IndexError {
    if is_conflict(&e) {
        IndexError::Store(CONFLICT.into())
    } else {
        store(e)
    }
}

const CONFLICT: &str = "serialization conflict";

fn is_conflict(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    )
}

impl KvStore for PostgresKv {
    fn transact(
        &self,
        write: bool,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let mut client = self
            .client
            .lock()
            .map_err(|_| store("poisoned connection"))?;
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let mut txn = client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .read_only(!write)
                .start()
                .map_err(store)?;
            let result = body(&mut PgTxn(&mut txn));
            let outcome = match result {
                Ok(()) => txn.commit().map_err(conflict_or_store),
                Err(e) => {
                    let _ = txn.rollback();
                    Err(e)
                }
            };
            match outcome {
                Err(IndexError::Store(message)) if message == CONFLICT => {
                    last = Some(message);
                    std::thread::sleep(backoff(attempt));
                }
                other => return other,
            }
        }
        Err(store(format!(
            "{} after {ATTEMPTS} attempts",
            last.unwrap_or_default()
        )))
    }
}
