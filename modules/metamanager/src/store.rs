//! The SQLite store: one worker thread writes, readers share a read-only connection.
//!
//! Writers (async tasks) send commands over a crossbeam channel and await a oneshot reply, so
//! no task ever blocks on a write's fsync. The worker takes whatever commands are queued (up
//! to [`MAX_BATCH`]) and runs them in one transaction: under load, many writes share one
//! commit and one fsync. After the commit it replies (and with them the cloud's ACKs go out),
//! then hands the changes to watchers in commit order.
//!
//! `get` and `list` read the file through a connection of their own: in WAL mode a reader
//! sees every committed transaction and never waits for the writer's fsync. The rows are not
//! also kept in memory: that copy was 1.5 MiB of heap for 1,000 Services and their Endpoints,
//! on boxes that may have 64 MiB, while reads are few (a watcher's first list, a query, the
//! resync report) and the file's pages sit in the kernel's cache anyway.
//!
//! A write that cannot commit because of the store itself (disk full, an I/O error) fails the
//! whole transaction: nothing of it is kept, every command in it gets
//! [`Error::Unwritable`](crate::Error::Unwritable), and the store's [`StoreState`] says why.
//! The next commit that succeeds flips it back; while no write comes, the worker tries a probe
//! write every [`PROBE_INTERVAL`], so the state recovers by itself once space returns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use proto::{ResourcePath, ResourceType};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, params};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::object::{Change, is_older, stored_version};

/// Most commands run in one transaction.
pub const MAX_BATCH: usize = 1024;

/// While the store cannot commit and no write comes, a probe write this often: the state
/// must recover when space returns even if nothing else is written.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Bytes the probe commits (then deletes): a write that needs fresh space, as a real batch
/// does, rather than one that fits in what a failed transaction already grew the WAL by.
const PROBE_BYTES: i64 = 256 * 1024;

/// Whether the store can commit, as its last write found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreState {
    /// The last write committed (or none has failed).
    Writable,
    /// The last write could not commit; the reason names the file and the cause.
    Unwritable(String),
}

/// One stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Edge resource path `<ns>/<type>/<name>`.
    pub key: String,
    /// `service`, `endpoints` or `pod`.
    pub kind: String,
    /// The object's JSON text.
    pub value: String,
    /// The object's Kubernetes resourceVersion, when it has one.
    pub resource_version: Option<String>,
}

/// What one change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new row was written.
    Inserted,
    /// An existing row was replaced.
    Updated,
    /// The row was removed.
    Deleted,
    /// Nothing changed: an older version than the stored one, or a delete of an absent row.
    Ignored,
}

/// A committed change, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A row was created.
    Inserted(Arc<Row>),
    /// A row was replaced.
    Updated(Arc<Row>),
    /// A row was removed (the value is the last stored one).
    Deleted(Arc<Row>),
}

impl Row {
    /// The object as JSON. Rows are written from JSON values, so they parse; a row edited by
    /// hand into something else reads as a string rather than failing the caller.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.value)
            .unwrap_or_else(|_| serde_json::Value::String(self.value.clone()))
    }
}

impl Event {
    /// The row the event is about.
    pub fn row(&self) -> &Row {
        match self {
            Event::Inserted(r) | Event::Updated(r) | Event::Deleted(r) => r,
        }
    }
}

/// Which rows a list or a watch covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this type (`None`: every type).
    pub kind: Option<ResourceType>,
    /// Only this namespace (`None`: every namespace).
    pub namespace: Option<String>,
}

impl Filter {
    /// The rows `path` names: `None` when it names one object (`<ns>/<type>/<name>`), else
    /// every object of its type in its namespace (`<ns>/<type>` or a list type).
    pub fn of(path: &ResourcePath) -> Option<Filter> {
        if path.name.is_some() && !path.kind.is_list() {
            return None;
        }
        Some(Filter {
            kind: Some(path.kind.element()),
            namespace: Some(path.namespace.to_string()),
        })
    }

    fn matches(&self, row: &Row) -> bool {
        self.covers(&row.key, &row.kind)
    }

    fn covers(&self, key: &str, kind: &str) -> bool {
        self.kind.is_none_or(|k| k.as_str() == kind)
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| key.split('/').next() == Some(ns))
    }
}

enum Command {
    Apply(Vec<Change>, oneshot::Sender<Result<Vec<Outcome>>>),
    Watch(
        Filter,
        mpsc::Sender<Event>,
        oneshot::Sender<Result<Vec<Arc<Row>>>>,
    ),
    /// Sets a pragma on the worker's connection (`max_page_count` stands in for a full disk).
    #[cfg(test)]
    Pragma(&'static str, i64, oneshot::Sender<Result<()>>),
}

/// SQLite's page cache of each connection, in KiB (a negative `cache_size` is KiB, a
/// positive one pages): the writer's serves the B-tree walks of writes, the reader's a list's
/// scan, which streams through the table once; at the default (2 MiB each) a scan would keep
/// the whole table resident for nothing.
const CACHE_KIB: i64 = 256;

/// A cheap handle on the store; the worker stops when the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    tx: Sender<Command>,
    reader: Arc<Mutex<Connection>>,
    state: watch::Receiver<StoreState>,
    worker: Arc<Worker>,
}

struct Worker {
    path: PathBuf,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and starts the worker.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_probing(path, PROBE_INTERVAL)
    }

    /// [`Store::open`] with the probe write every `probe_every` while the store cannot commit.
    pub(crate) fn open_probing(path: &Path, probe_every: Duration) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        // WAL lets readers (ours, sqlite3 by hand, backups) read while the writer commits;
        // FULL sync because an ACKed change must survive a power cut, which edge boxes get.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, type TEXT NOT NULL, value TEXT NOT NULL);",
        )?;
        // Opened after the writer made the file WAL and the table exists, so it reads both.
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.pragma_update(None, "cache_size", -CACHE_KIB)?;
        let held: i64 = reader.query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?;
        log::info!("metadata store {} holds {held} object(s)", path.display());
        let (tx, rx) = crossbeam_channel::unbounded();
        let (state_tx, state) = watch::channel(StoreState::Writable);
        let writer = Writer {
            conn,
            path: path.to_owned(),
            state: state_tx,
            watchers: Vec::new(),
            probe_every,
        };
        let thread = std::thread::Builder::new()
            .name("metamanager-store".into())
            .spawn(move || writer.run(rx))?;
        Ok(Store {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            state,
            worker: Arc::new(Worker {
                path: path.to_owned(),
                thread: std::sync::Mutex::new(Some(thread)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.worker.path
    }

    /// Queues a command now (so commands run in call order) and returns its reply.
    fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> impl Future<Output = Result<T>> + Send + 'static
    where
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        // Unbounded, so this never blocks a task; callers await their replies, which is what
        // bounds the queue.
        let queued = self.tx.send(make(reply)).map_err(|_| Error::StoreStopped);
        async move {
            queued?;
            rx.await.map_err(|_| Error::StoreStopped)?
        }
    }

    /// Writes `changes` in one transaction. Queued when called, so writes are applied in
    /// call order; the future resolves after the commit.
    pub fn apply(
        &self,
        changes: Vec<Change>,
    ) -> impl Future<Output = Result<Vec<Outcome>>> + Send + 'static {
        self.call(|r| Command::Apply(changes, r))
    }

    /// Whether the store can commit, updated by every write (and probe) that finds it changed.
    pub fn state(&self) -> watch::Receiver<StoreState> {
        self.state.clone()
    }

    /// Sets a pragma on the writer's connection.
    #[cfg(test)]
    pub(crate) fn pragma(
        &self,
        name: &'static str,
        value: i64,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        self.call(move |r| Command::Pragma(name, value, r))
    }

    /// One committed row by key.
    pub fn get(&self, key: &str) -> Result<Option<Arc<Row>>> {
        Ok(get(&self.reader(), key)?.map(Arc::new))
    }

    /// Committed rows matching `filter`, ordered by key. The scan runs on a blocking thread:
    /// a list of every object (a resync report, an app listing all Services) takes
    /// milliseconds of SQLite, which on a runtime thread would hold up every task queued
    /// behind it, the proxy's included.
    pub async fn list(&self, filter: Filter) -> Result<Vec<Arc<Row>>> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            Ok(list(&conn, &filter)?)
        })
        .await
        .map_err(|_| Error::StoreStopped)?
    }

    /// Number of committed rows.
    pub fn len(&self) -> Result<usize> {
        let n: i64 = self
            .reader()
            .query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The connection holds no state a panicking holder could leave half-made: each read
    /// is one statement.
    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rows matching `filter` now, and from then on every committed change to them on
    /// `events`. A watcher whose channel is full is dropped (its channel closes), so a slow
    /// reader never holds up the store or the other watchers.
    pub fn watch(
        &self,
        filter: Filter,
        events: mpsc::Sender<Event>,
    ) -> impl Future<Output = Result<Vec<Arc<Row>>>> + Send + 'static {
        self.call(|r| Command::Watch(filter, events, r))
    }

    /// Stops the worker after the queued commands and waits for it.
    pub fn close(self) {
        let Store { tx, worker, .. } = self;
        drop(tx);
        if let Ok(mut thread) = worker.thread.lock()
            && let Some(t) = thread.take()
        {
            // Other clones keep the channel open; only the last one can join.
            if Arc::strong_count(&worker) == 1 {
                let _ = t.join();
            } else {
                *thread = Some(t);
            }
        }
    }
}

/// A row as read from the file; its resourceVersion is the one inside its JSON.
fn row(key: String, kind: String, value: String) -> Row {
    Row {
        resource_version: stored_version(&value),
        key,
        kind,
        value,
    }
}

fn get(conn: &Connection, key: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached("SELECT type, value FROM meta WHERE key = ?1")?
        .query_row([key], |r| Ok(row(key.to_owned(), r.get(0)?, r.get(1)?)))
        .optional()
}

fn list(conn: &Connection, filter: &Filter) -> rusqlite::Result<Vec<Arc<Row>>> {
    // Keys of one namespace and type share the prefix `ns/type/`, and '0' follows '/'.
    let (sql, bounds) = match (&filter.kind, &filter.namespace) {
        (Some(kind), Some(ns)) => (
            "SELECT key, type, value FROM meta WHERE key >= ?1 AND key < ?2 ORDER BY key",
            vec![format!("{ns}/{kind}/"), format!("{ns}/{kind}0")],
        ),
        _ => ("SELECT key, type, value FROM meta ORDER BY key", Vec::new()),
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(bounds))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let (key, kind): (String, String) = (r.get(0)?, r.get(1)?);
        // The value is read only for rows the filter keeps.
        if filter.covers(&key, &kind) {
            out.push(Arc::new(row(key, kind, r.get(2)?)));
        }
    }
    Ok(out)
}

struct Watcher {
    filter: Filter,
    tx: mpsc::Sender<Event>,
}

/// The worker's side: the connection and what it publishes to.
struct Writer {
    conn: Connection,
    path: PathBuf,
    state: watch::Sender<StoreState>,
    watchers: Vec<Watcher>,
    probe_every: Duration,
}

type Applies = Vec<(Vec<Change>, oneshot::Sender<Result<Vec<Outcome>>>)>;

impl Writer {
    fn run(mut self, rx: Receiver<Command>) {
        loop {
            let first = if self.writable() {
                match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(self.probe_every) {
                    Ok(cmd) => cmd,
                    Err(RecvTimeoutError::Timeout) => {
                        self.probe();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(MAX_BATCH - 1));
            // A watch must see exactly the changes committed after its initial list, so the
            // writes queued before it are committed (and published) first.
            let mut segment = Vec::new();
            for cmd in batch {
                match cmd {
                    Command::Watch(filter, events, reply) => {
                        self.run_segment(std::mem::take(&mut segment));
                        match list(&self.conn, &filter) {
                            Ok(initial) => {
                                self.watchers.push(Watcher { filter, tx: events });
                                let _ = reply.send(Ok(initial));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e.into()));
                            }
                        }
                    }
                    Command::Apply(changes, reply) => segment.push((changes, reply)),
                    #[cfg(test)]
                    Command::Pragma(name, value, reply) => {
                        self.run_segment(std::mem::take(&mut segment));
                        let _ = reply.send(
                            self.conn
                                .pragma_update(None, name, value)
                                .map_err(Error::from),
                        );
                    }
                }
            }
            self.run_segment(segment);
        }
        log::debug!("store worker stopped");
    }

    fn writable(&self) -> bool {
        *self.state.borrow() == StoreState::Writable
    }

    /// Records what the last write found; receivers wake only on a change.
    fn found(&self, state: StoreState) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// Why a write failed, naming the file: a full disk in words anyone grepping a log for
    /// it finds.
    fn reason(&self, e: &rusqlite::Error) -> String {
        let cause = match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => format!("disk full, no space left ({e})"),
            _ => e.to_string(),
        };
        format!("store {} cannot commit: {cause}", self.path.display())
    }

    /// A write that needs fresh space, committed and then removed.
    fn probe(&mut self) {
        let probed = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            tx.execute_batch("CREATE TABLE IF NOT EXISTS store_probe(b BLOB)")?;
            tx.execute(
                "INSERT INTO store_probe(b) VALUES (zeroblob(?1))",
                [PROBE_BYTES],
            )?;
            tx.commit()?;
            self.conn.execute("DELETE FROM store_probe", [])?;
            Ok(())
        })();
        match probed {
            Ok(()) => self.found(StoreState::Writable),
            Err(e) => {
                let reason = self.reason(&e);
                self.roll_back();
                log::debug!("probe write failed: {reason}");
                self.found(StoreState::Unwritable(reason));
            }
        }
    }

    /// Leaves no transaction open after a failure (SQLite may or may not have rolled it
    /// back itself), so the connection serves the next write.
    fn roll_back(&self) {
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            log::warn!("store {}: rollback failed: {e}", self.path.display());
        }
    }

    fn run_segment(&mut self, cmds: Applies) {
        if cmds.is_empty() {
            return;
        }
        let (work, replies): (Vec<Vec<Change>>, Vec<_>) = cmds.into_iter().unzip();
        let mut events = Vec::new();
        let committed = (|| -> rusqlite::Result<Vec<Result<Vec<Outcome>>>> {
            let mut tx = self.conn.transaction()?;
            let mut results = Vec::with_capacity(work.len());
            for changes in work {
                match apply(&mut tx, changes, &mut events) {
                    // The store, not this command, failed: SQLite may already have rolled
                    // the whole transaction back, so no command of it may count as written.
                    Err(Error::Sqlite(e)) if store_failure(&e) => return Err(e),
                    result => results.push(result),
                }
            }
            tx.commit()?;
            Ok(results)
        })();
        let results = match committed {
            Ok(results) => results,
            Err(e) => {
                let reason = self.reason(&e);
                self.roll_back();
                log::debug!(
                    "{} write(s) not committed, none ACKed: {reason}",
                    replies.len()
                );
                // The state first, so a writer that hears of its failure sees why.
                self.found(StoreState::Unwritable(reason.clone()));
                for reply in replies {
                    let _ = reply.send(Err(Error::Unwritable(reason.clone())));
                }
                return;
            }
        };
        self.found(StoreState::Writable);
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
        publish(&mut self.watchers, events);
    }
}

/// Whether an SQLite error is the store's (full, I/O, locked, corrupt: the same write may
/// succeed later, or not at all, but it is not the request's fault) rather than the one
/// command's (a value too big for SQLite, a constraint).
fn store_failure(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code().is_some_and(|code| {
        !matches!(
            code,
            ErrorCode::TooBig
                | ErrorCode::ConstraintViolation
                | ErrorCode::TypeMismatch
                | ErrorCode::ParameterOutOfRange
        )
    })
}

fn publish(watchers: &mut Vec<Watcher>, events: Vec<Event>) {
    for event in events {
        watchers.retain(|w| {
            if !w.filter.matches(event.row()) {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    log::warn!("dropping a watcher whose buffer is full (it stopped reading)");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// Applies one command's changes atomically: a failing change undoes the whole command and
/// nothing else in the batch (a savepoint when there is more than one statement).
fn apply(
    tx: &mut Transaction<'_>,
    changes: Vec<Change>,
    events: &mut Vec<Event>,
) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(changes.len());
    let mut new_events = Vec::new();
    if changes.len() == 1 {
        for change in changes {
            let (outcome, event) = apply_one(tx, change)?;
            outcomes.push(outcome);
            new_events.extend(event);
        }
    } else {
        let sp = tx.savepoint()?;
        for change in changes {
            let (outcome, event) = apply_one(&sp, change)?;
            outcomes.push(outcome);
            new_events.extend(event);
        }
        sp.commit()?;
    }
    events.extend(new_events);
    Ok(outcomes)
}

/// One change, against what the transaction sees (earlier changes of the batch included).
fn apply_one(conn: &Connection, change: Change) -> Result<(Outcome, Option<Event>)> {
    let kind = change.kind.clone();
    let Some(value) = change.value else {
        let Some(old) = get(conn, &change.key)? else {
            return Ok((Outcome::Ignored, None));
        };
        conn.prepare_cached("DELETE FROM meta WHERE key = ?1")?
            .execute([&change.key])?;
        return Ok((Outcome::Deleted, Some(Event::Deleted(Arc::new(old)))));
    };
    // Whether a row exists and its version, as `stored_version` reads it (a string at
    // metadata.resourceVersion of valid JSON), taken out by SQLite's JSON functions in C
    // rather than by building a JSON tree of the stored text in Rust for every write.
    let existing: Option<Option<String>> = conn
        .prepare_cached(
            "SELECT CASE WHEN json_valid(value) \
                 AND json_type(value, '$.metadata.resourceVersion') = 'text' \
                 THEN json_extract(value, '$.metadata.resourceVersion') END \
             FROM meta WHERE key = ?1",
        )?
        .query_row([&change.key], |r| r.get(0))
        .optional()?;
    if let (Some(incoming), Some(Some(stored))) = (&change.resource_version, &existing)
        && is_older(incoming, stored)
    {
        log::debug!(
            "ignoring {} at version {incoming}: {stored} is stored",
            change.key
        );
        return Ok((Outcome::Ignored, None));
    }
    conn.prepare_cached("INSERT OR REPLACE INTO meta(key, type, value) VALUES (?1, ?2, ?3)")?
        .execute(params![change.key, kind, value])?;
    let row = Arc::new(Row {
        key: change.key,
        kind,
        value,
        resource_version: change.resource_version,
    });
    Ok(if existing.is_some() {
        (Outcome::Updated, Some(Event::Updated(row)))
    } else {
        (Outcome::Inserted, Some(Event::Inserted(row)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Service whose JSON is about `bytes` long, so it needs that much fresh space.
    fn change(name: &str, bytes: usize) -> Change {
        let value = serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "pad": "x".repeat(bytes),
        });
        Change {
            key: format!("default/service/{name}"),
            kind: ResourceType::Service.as_str().into(),
            value: Some(value.to_string()),
            resource_version: Some("1".into()),
        }
    }

    /// The keys another connection sees committed in the file.
    fn keys_in_file(db: &Path) -> Vec<String> {
        let conn = Connection::open(db).unwrap();
        let mut stmt = conn.prepare("SELECT key FROM meta ORDER BY key").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// SQLite answers a write past `max_page_count` pages as it answers a full disk
    /// (SQLITE_FULL); 1 caps the file at the pages it has.
    async fn fill(store: &Store) {
        store.pragma("max_page_count", 1).await.unwrap();
    }

    async fn make_room(store: &Store) {
        store.pragma("max_page_count", 1 << 30).await.unwrap();
    }

    /// A Service at resourceVersion `rv` with a marker to tell its texts apart.
    fn versioned(name: &str, rv: &str, mark: &str) -> Change {
        let value = serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
            "mark": mark,
        });
        Change {
            key: format!("default/service/{name}"),
            kind: ResourceType::Service.as_str().into(),
            value: Some(value.to_string()),
            resource_version: Some(rv.into()),
        }
    }

    #[tokio::test]
    async fn changes_of_one_batch_see_each_other_and_readers_see_only_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("edge.db")).unwrap();
        let (events_tx, mut events) = mpsc::channel(16);
        assert!(
            store
                .watch(Filter::default(), events_tx)
                .await
                .unwrap()
                .is_empty()
        );
        let delete = Change {
            value: None,
            resource_version: None,
            ..versioned("a", "", "")
        };
        // One command: each change is checked against the one before it, not the file.
        let outcomes = store
            .apply(vec![
                versioned("a", "5", "first"),
                versioned("a", "7", "second"),
                versioned("a", "6", "older"),
                delete.clone(),
                delete,
                versioned("b", "1", "kept"),
            ])
            .await
            .unwrap();
        use Outcome::*;
        assert_eq!(
            outcomes,
            [Inserted, Updated, Ignored, Deleted, Ignored, Inserted]
        );
        // Watchers hear of a commit after its writer does.
        let mut seen = Vec::new();
        for _ in 0..4 {
            let next = tokio::time::timeout(Duration::from_secs(10), events.recv());
            seen.push(next.await.expect("no event").expect("watch closed"));
        }
        let Event::Deleted(gone) = &seen[2] else {
            panic!("not a delete: {:?}", seen[2]);
        };
        assert!(
            gone.value.contains("second"),
            "the delete carries the last text"
        );
        assert_eq!(gone.resource_version.as_deref(), Some("7"));
        // What the reader connection sees once the write has resolved.
        assert!(store.get("default/service/a").unwrap().is_none());
        let b = store.get("default/service/b").unwrap().unwrap();
        assert_eq!(b.resource_version.as_deref(), Some("1"));
        let listed = store
            .list(Filter::of(&ResourcePath::parse_edge("default/service").unwrap()).unwrap())
            .await
            .unwrap();
        assert_eq!(listed, [b]);
        let other_ns = Filter {
            namespace: Some("other".into()),
            ..Filter::default()
        };
        assert!(store.list(other_ns).await.unwrap().is_empty());
        assert_eq!(store.len().unwrap(), 1);
    }

    #[test]
    fn a_list_waits_for_sqlite_off_the_runtime_thread() {
        // A scan that takes long (here: it waits for the reader, which the test holds) must
        // leave the runtime's thread to the other tasks. With one thread and the scan run
        // inline, the list task would block that thread on the lock and nothing would run.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("edge.db")).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let held = store.reader.clone();
            let guard = held.lock().unwrap();
            let outcome = runtime.block_on(async {
                let list = tokio::spawn({
                    let store = store.clone();
                    async move { store.list(Filter::default()).await }
                });
                // The list task runs in these turns; this task gets the thread back.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                let waiting = !list.is_finished();
                drop(guard);
                (waiting, list.await.unwrap().map(|rows| rows.len()))
            });
            let _ = done_tx.send(outcome);
        });
        let (waiting, listed) = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the list held the runtime's only thread");
        assert!(waiting, "the list finished while its reader was held");
        assert_eq!(listed.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_write_the_full_store_cannot_commit_leaves_nothing_and_the_next_commit_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("edge.db");
        let store = Store::open_probing(&db, Duration::from_secs(3600)).unwrap();
        let mut state = store.state();
        store.apply(vec![change("small", 10)]).await.unwrap();
        fill(&store).await;

        let err = store
            .apply(vec![change("big", 64 * 1024)])
            .await
            .unwrap_err();
        let Error::Unwritable(reason) = &err else {
            panic!("not an Unwritable error: {err:?}");
        };
        assert!(reason.contains("disk full"), "{reason}");
        assert!(reason.contains(&db.display().to_string()), "{reason}");
        assert_eq!(
            *state.borrow_and_update(),
            StoreState::Unwritable(reason.clone())
        );
        // A command of several changes fails whole, the first one (which fits) included.
        let err = store
            .apply(vec![change("fits", 10), change("big", 64 * 1024)])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unwritable(_)), "{err:?}");
        assert!(store.get("default/service/big").unwrap().is_none());
        assert!(store.get("default/service/fits").unwrap().is_none());
        assert_eq!(keys_in_file(&db), ["default/service/small"]);
        assert!(
            !state.has_changed().unwrap(),
            "the same failure is no new state"
        );

        // Room again: the same connection commits the same write.
        make_room(&store).await;
        store
            .apply(vec![change("fits", 10), change("big", 64 * 1024)])
            .await
            .unwrap();
        assert_eq!(*state.borrow_and_update(), StoreState::Writable);
        assert_eq!(
            keys_in_file(&db),
            [
                "default/service/big",
                "default/service/fits",
                "default/service/small"
            ]
        );
        assert_eq!(store.len().unwrap(), 3);
    }

    #[tokio::test]
    async fn with_no_writes_coming_a_probe_finds_the_room_that_returned() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("edge.db");
        let store = Store::open_probing(&db, Duration::from_millis(20)).unwrap();
        let mut state = store.state();
        fill(&store).await;
        assert!(store.apply(vec![change("big", 64 * 1024)]).await.is_err());
        assert!(matches!(
            *state.borrow_and_update(),
            StoreState::Unwritable(_)
        ));
        make_room(&store).await;
        tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| *s == StoreState::Writable),
        )
        .await
        .expect("no probe found the room")
        .unwrap();
        store.close();
        let conn = Connection::open(&db).unwrap();
        let probes: i64 = conn
            .query_row("SELECT count(*) FROM store_probe", [], |r| r.get(0))
            .unwrap();
        assert_eq!(probes, 0, "the probe removes what it wrote");
        assert!(keys_in_file(&db).is_empty());
    }
}
