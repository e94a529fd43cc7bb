//! The lease table: its name (checked, quoted), its DDL, and the statements the driver runs
//! on it. Names are never pasted in unchecked: each part of `schema.table` must be a plain
//! identifier, and is double-quoted in the SQL.
//!
//! ```text
//! id          bytea primary key   SHA-256 of `key`: fixed width, whatever the key's length
//! key         bytea               the locker prefix's length, `:`, the prefix, the key
//! token       text                the holder's token ('' once released)
//! expires_at  timestamptz         by the database's clock
//! fencing     bigint              from the sequence <table>_fencing
//! ```
//!
//! A released or expired row is kept for an hour ([`KEEP_FREE_ROWS`]) and then swept: an
//! acquisition that finds the row takes its fencing number from the sequence while it holds
//! the row's lock, so it is above the last holder's; only a key unused for that long starts
//! from a fresh row.

use std::time::Duration;

use runa_lock::Error;

/// The default table name.
///
/// ```
/// assert_eq!(runa_lock_postgres::DEFAULT_TABLE, "runa_locks");
/// ```
pub const DEFAULT_TABLE: &str = "runa_locks";

/// How long a released or expired row stays before the sweep removes it.
pub(crate) const KEEP_FREE_ROWS: Duration = Duration::from_secs(60 * 60);

/// The longest table name part: the sequence and index names add up to 12 bytes, and
/// PostgreSQL names stop at 63.
const MAX_NAME: usize = 48;

/// The NOTIFY channel releases are announced on (the payload names the table and the key).
pub(crate) const CHANNEL: &str = "runa_lock_release";

/// A checked table name: `table` or `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    schema: Option<String>,
    name: String,
}

impl Table {
    /// `name` checked: one or two parts separated by `.`, each a letter or `_` and then
    /// letters, digits or `_`, at most 48 bytes.
    pub(crate) fn parse(name: &str, path: &str) -> Result<Table, Error> {
        let invalid = |problem: &str| {
            Error::invalid_config(path, problem, Some(format!("{:?}", truncated(name))))
        };
        let parts: Vec<&str> = name.split('.').collect();
        let (schema, table) = match parts.as_slice() {
            [table] => (None, *table),
            [schema, table] => (Some(*schema), *table),
            _ => return Err(invalid("a table name is `table` or `schema.table`")),
        };
        for part in schema.iter().chain([&table]) {
            let mut chars = part.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid(
                    "each part of a table name must start with a letter or `_` and hold only ASCII letters, digits and `_`",
                ));
            }
            if part.len() > MAX_NAME {
                return Err(invalid("each part of a table name is at most 48 bytes"));
            }
        }
        Ok(Table {
            schema: schema.map(str::to_owned),
            name: table.to_owned(),
        })
    }

    /// The table's name as written (`schema.table` or `table`), for messages and payloads.
    pub(crate) fn display(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The DDL run when the table is missing, as one implicit transaction (it all rolls
    /// back on an error), under an advisory lock keyed by the table's schema (the current
    /// one when the name has none) and name, so that drivers creating it at once wait for
    /// each other.
    pub(crate) fn create(&self) -> String {
        let schema = match &self.schema {
            Some(schema) => format!("'{schema}'"),
            None => "current_schema()".to_owned(),
        };
        format!(
            "SELECT pg_advisory_xact_lock(hashtext('runa-lock ' || {schema} || '.' || '{}'));\n{}",
            self.name,
            self.schema()
        )
    }

    /// The quoted name, as SQL (and `to_regclass`) reads it: case kept.
    pub(crate) fn sql_name(&self) -> String {
        self.quoted("")
    }

    /// `"schema"."name<suffix>"`, or `"name<suffix>"`.
    fn quoted(&self, suffix: &str) -> String {
        let name = format!("\"{}{suffix}\"", self.name);
        match &self.schema {
            Some(schema) => format!("\"{schema}\".{name}"),
            None => name,
        }
    }

    /// The DDL that creates the table, its sequence and its index when missing.
    pub(crate) fn schema(&self) -> String {
        let table = self.quoted("");
        let sequence = self.quoted("_fencing");
        let index = format!("\"{}_expires_at\"", self.name);
        format!(
            "CREATE SEQUENCE IF NOT EXISTS {sequence};\n\
             CREATE TABLE IF NOT EXISTS {table} (\n    \
                 id bytea PRIMARY KEY,\n    \
                 key bytea NOT NULL,\n    \
                 token text NOT NULL,\n    \
                 expires_at timestamptz NOT NULL,\n    \
                 fencing bigint NOT NULL\n\
             );\n\
             CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at);\n"
        )
    }

    /// The statements on this table.
    pub(crate) fn statements(&self) -> Statements {
        let table = self.quoted("");
        // In a string literal, for `nextval`: the quoted name holds no `'` (checked).
        let sequence = self.quoted("_fencing");
        let keep = KEEP_FREE_ROWS.as_secs();
        Statements {
            exists: "SELECT to_regclass($1) IS NOT NULL".to_owned(),
            // $1 id, $2 key, $3 token, $4 ttl in ms. The number is drawn again under the
            // row's lock when the row exists, so it is above its last holder's. A holder's
            // own token is granted again (its reply may have been lost), never shortened.
            // The second column is the holder's time left, read before the attempt.
            acquire: format!(
                "WITH attempt AS (\n\
                   INSERT INTO {table} AS l (id, key, token, expires_at, fencing)\n\
                   VALUES ($1, $2, $3, clock_timestamp() + $4::bigint * interval '1 millisecond', nextval('{sequence}'))\n\
                   ON CONFLICT (id) DO UPDATE SET\n\
                     token = excluded.token,\n\
                     expires_at = CASE WHEN l.token = excluded.token\n\
                       THEN greatest(l.expires_at, excluded.expires_at)\n\
                       ELSE excluded.expires_at END,\n\
                     fencing = nextval('{sequence}')\n\
                   WHERE l.expires_at <= clock_timestamp() OR l.token = excluded.token\n\
                   RETURNING fencing\n\
                 )\n\
                 SELECT (SELECT fencing FROM attempt),\n\
                   (SELECT ceil(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint\n\
                      FROM {table} WHERE id = $1)"
            ),
            // $1 id, $2 token, $3 ttl in ms: extends, never shortens.
            renew: format!(
                "UPDATE {table} SET expires_at = greatest(expires_at, clock_timestamp() + $3::bigint * interval '1 millisecond')\n\
                 WHERE id = $1 AND token = $2 AND expires_at > clock_timestamp()"
            ),
            // $1 id, $2 token, $3 channel, $4 payload: frees the row (kept for its fencing
            // number) and announces it, on commit.
            release: format!(
                "WITH freed AS (\n\
                   UPDATE {table} SET token = '', expires_at = clock_timestamp()\n\
                   WHERE id = $1 AND token = $2 AND expires_at > clock_timestamp()\n\
                   RETURNING id\n\
                 )\n\
                 SELECT count(*) FROM (SELECT pg_notify($3, $4) FROM freed) announced"
            ),
            // $1 id: the holder's time left in ms.
            inspect: format!(
                "SELECT ceil(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint\n\
                 FROM {table} WHERE id = $1 AND expires_at > clock_timestamp()"
            ),
            // Rows free for over an hour, a batch at a time.
            // The age is checked again on the row itself: a row taken by an acquisition
            // while the sweep waited for it is not deleted.
            sweep: format!(
                "DELETE FROM {table} WHERE id IN (\n\
                   SELECT id FROM {table}\n\
                   WHERE expires_at < clock_timestamp() - interval '{keep} seconds'\n\
                   LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED)\n\
                 AND expires_at < clock_timestamp() - interval '{keep} seconds'"
            ),
            // The table's schema-qualified name, as the catalog has it: the same for every
            // spelling of it (`runa_locks`, `public.runa_locks`).
            canonical: "SELECT n.nspname || '.' || c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)"
                .to_owned(),
        }
    }
}

/// The SQL of each operation.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    pub(crate) exists: String,
    pub(crate) acquire: String,
    pub(crate) renew: String,
    pub(crate) release: String,
    pub(crate) inspect: String,
    pub(crate) sweep: String,
    pub(crate) canonical: String,
}

/// How many rows one sweep statement deletes at most.
pub(crate) const SWEEP_BATCH: u64 = 1000;

/// At most 64 characters of `text`, for messages.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The DDL of the lease table `table` (default [`DEFAULT_TABLE`]), for those who run their
/// own migrations; the driver runs the same when the table is missing.
///
/// # Panics
///
/// Never: a name that is not a valid table name (see [`PostgresDriver::with_table`](crate::PostgresDriver::with_table))
/// gives the DDL of a comment saying so, which fails to create anything.
///
/// ```
/// let ddl = runa_lock_postgres::schema("locks.jobs");
/// assert!(ddl.contains(r#"CREATE TABLE IF NOT EXISTS "locks"."jobs" ("#));
/// assert!(ddl.contains(r#"CREATE SEQUENCE IF NOT EXISTS "locks"."jobs_fencing""#));
/// ```
pub fn schema(table: &str) -> String {
    match Table::parse(table, "table") {
        Ok(table) => table.schema(),
        Err(error) => format!("-- runa-lock-postgres: {error}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_quoted() {
        let table = Table::parse("runa_locks", "table").unwrap();
        assert!(
            table
                .schema()
                .contains("CREATE TABLE IF NOT EXISTS \"runa_locks\" (")
        );
        let table = Table::parse("ops.Locks_2", "table").unwrap();
        assert_eq!(table.display(), "ops.Locks_2");
        assert!(
            table
                .statements()
                .acquire
                .contains("nextval('\"ops\".\"Locks_2_fencing\"')")
        );
        for bad in [
            "",
            "a.b.c",
            "1abc",
            "locks; DROP TABLE x",
            "lo\"cks",
            "lo'cks",
            "ops.",
            ".locks",
            "ключ",
            &"x".repeat(49),
        ] {
            let err = Table::parse(bad, "lock.postgres.table").unwrap_err();
            assert!(
                err.to_string().starts_with("lock.postgres.table: "),
                "{err}"
            );
        }
        assert!(schema("a;b").starts_with("-- runa-lock-postgres: table: "));
    }
}
