//! The index's tables in PostgreSQL, for several gateways sharing one
//! index: one table `redstuff_s3_kv (tbl, key, value)`, every transaction
//! SERIALIZABLE and run again when PostgreSQL reports a conflict (another
//! gateway changed what it read), so the index behaves as with one writer.

use std::sync::Mutex;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, IsolationLevel, NoTls};

use super::index::IndexError;
use super::kv::{prefix_end, Entries, KvStore, Table, Txn};

/// Attempts of a transaction that keeps conflicting.
const ATTEMPTS: u32 = 60;

/// A pause before attempt `attempt` again: random, up to twice the last
/// one's bound, at most 200 ms, so conflicting writers drift apart.
fn backoff(attempt: u32) -> Duration {
    let bound_ms = (1u64 << attempt.min(8)).min(200);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos() as u64);
    let mut x = nanos ^ 0x9E37_79B9_7F4A_7C15 ^ (u64::from(attempt) << 32);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    Duration::from_micros(x % (bound_ms * 1000 + 1))
}

fn store(e: impl std::fmt::Display) -> IndexError {
    IndexError::Store(e.to_string())
}

/// A PostgreSQL error as people read it: the server's own message where
/// it sent one (the error's display is only "db error").
fn pg_error(e: &postgres::Error) -> IndexError {
    store(describe(e))
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

/// Whether `e` says the connection is gone: closed, broken, or ended by
/// the server shutting down or restarting.
fn connection_lost(e: &postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || code.code().starts_with("08")
        }
        None => true,
    }
}

/// Bounds on a connection the URL leaves unbounded: a server that does
/// not answer fails the request instead of holding every other one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(30);

/// The PostgreSQL store: one connection, used by one transaction at a
/// time, opened again when it was lost (a PostgreSQL restart or failover
/// closes it).
pub struct PostgresKv {
    config: Config,
    client: Mutex<Option<Client>>,
}

impl PostgresKv {
    /// Connects to `url` (`postgresql://user:password@host:port/db`, TLS
    /// off: inside a cluster network or on loopback) and creates the table
    /// when missing.
    pub fn connect(url: &str) -> Result<Self, IndexError> {
        let mut config: Config = url.parse().map_err(store)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(UNACKNOWLEDGED_TIMEOUT);
        }
        let client = open(&config)?;
        Ok(Self {
            config,
            client: Mutex::new(Some(client)),
        })
    }
}

/// A connection to the index's database, its table made when missing.
fn open(config: &Config) -> Result<Client, IndexError> {
    let mut client = config
        .connect(NoTls)
        .map_err(|e| store(format!("cannot reach the S3 index's database: {e}")))?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS redstuff_s3_kv (
                 tbl smallint NOT NULL,
                 key bytea NOT NULL,
                 value bytea NOT NULL,
                 PRIMARY KEY (tbl, key))",
        )
        .map_err(|e| pg_error(&e))?;
    Ok(client)
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
        pg_error(&e)
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
        let mut connection = self
            .client
            .lock()
            .map_err(|_| store("poisoned connection"))?;
        let mut last = None;
        let mut lost = false;
        for attempt in 0..ATTEMPTS {
            // A lost connection is opened again before a transaction
            // starts, never within one: a commit whose answer was lost may
            // have happened, so that request fails instead of running twice.
            if lost || connection.as_ref().is_none_or(Client::is_closed) {
                lost = false;
                *connection = None;
                *connection = Some(open(&self.config)?);
                tracing::info!("connected to the S3 index's database again");
            }
            let client = connection.as_mut().expect("connected above");
            let started = client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .read_only(!write)
                .start();
            let mut txn = match started {
                Ok(txn) => txn,
                // Nothing was sent for this request yet: the next attempt
                // opens a new connection and starts again.
                Err(e) if connection_lost(&e) => {
                    last = Some(format!("connection lost: {}", describe(&e)));
                    lost = true;
                    continue;
                }
                Err(e) => return Err(pg_error(&e)),
            };
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
