//! The SQL of the driver's acquire and release, for a floor that sends the very same
//! statements by hand on one connection (the bench binary's PostgreSQL floor).

use runa_lock::Error;

use crate::table::Table;

/// The channel the release statement announces on (its `$3`).
pub const CHANNEL: &str = crate::table::CHANNEL;

/// The driver's acquire and release statements on `table` (`table` or `schema.table`), as
/// it prepares them. Acquire: `$1` id (`bytea`), `$2` key (`bytea`), `$3` token (`text`),
/// `$4` ttl in ms (`bigint`); returns the fencing number (NULL when busy) and the holder's
/// time left. Release: `$1` id, `$2` token, `$3` channel, `$4` payload (`text`); returns
/// how many rows it freed.
///
/// # Errors
///
/// [`Error::InvalidConfig`] for a table name the driver refuses.
///
/// ```
/// let (acquire, release) = runa_lock_postgres::testing::statements::statements("runa_locks")?;
/// assert!(acquire.contains("INSERT INTO \"runa_locks\""));
/// assert!(release.contains("pg_notify($3, $4)"));
/// # Ok::<(), runa_lock::Error>(())
/// ```
pub fn statements(table: &str) -> Result<(String, String), Error> {
    let statements = Table::parse(table, "table")?.statements();
    Ok((statements.acquire, statements.release))
}
