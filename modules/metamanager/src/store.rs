//! The SQLite store, owned by one worker thread.
//!
//! Callers (async tasks) send commands over a crossbeam channel and await a oneshot reply, so
//! no task ever blocks on SQLite. The worker takes whatever commands are queued (up to
//! [`MAX_BATCH`]) and runs them in one transaction: under load, many writes share one commit
//! and one fsync. Replies — and with them the cloud's ACKs — go out only after the commit, and
//! watchers get the committed changes in commit order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use proto::ResourceType;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::object::{Change, is_older, stored_version};

/// Most commands run in one transaction.
pub const MAX_BATCH: usize = 1024;

/// One stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Edge resource path `<ns>/<type>/<name>`.
    pub key: String,
    /// `service`, `endpoints` or `pod`.
    pub kind: String,
    /// The object's JSON text.
    pub value: String,
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
    fn matches(&self, row: &Row) -> bool {
        self.kind.is_none_or(|k| k.as_str() == row.kind)
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| row.key.split('/').next() == Some(ns))
    }
}

enum Command {
    Apply(Vec<Change>, oneshot::Sender<Result<Vec<Outcome>>>),
    Get(String, oneshot::Sender<Result<Option<Row>>>),
    List(Filter, oneshot::Sender<Result<Vec<Row>>>),
    Watch(
        Filter,
        mpsc::Sender<Event>,
        oneshot::Sender<Result<Vec<Row>>>,
    ),
}

/// A cheap handle on the store; the worker stops when the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    tx: Sender<Command>,
    worker: Arc<Worker>,
}

struct Worker {
    path: PathBuf,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and starts the worker thread.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        // WAL lets readers of the file (sqlite3 by hand, backups) coexist with the writer;
        // FULL sync because an ACKed change must survive a power cut, which edge boxes get.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, type TEXT NOT NULL, value TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS meta_type ON meta(type, key);",
        )?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("metamanager-store".into())
            .spawn(move || run(conn, rx))?;
        Ok(Store {
            tx,
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

    /// One row by key.
    pub fn get(&self, key: &str) -> impl Future<Output = Result<Option<Row>>> + Send + 'static {
        let key = key.to_owned();
        self.call(|r| Command::Get(key, r))
    }

    /// Rows matching `filter`, ordered by key.
    pub fn list(&self, filter: Filter) -> impl Future<Output = Result<Vec<Row>>> + Send + 'static {
        self.call(|r| Command::List(filter, r))
    }

    /// The rows matching `filter` now, and from then on every committed change to them on
    /// `events`. A watcher whose channel is full is dropped (its channel closes), so a slow
    /// reader never holds up the store or the other watchers.
    pub fn watch(
        &self,
        filter: Filter,
        events: mpsc::Sender<Event>,
    ) -> impl Future<Output = Result<Vec<Row>>> + Send + 'static {
        self.call(|r| Command::Watch(filter, events, r))
    }

    /// Stops the worker after the queued commands and waits for it.
    pub fn close(self) {
        let Store { tx, worker } = self;
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

struct Watcher {
    filter: Filter,
    tx: mpsc::Sender<Event>,
}

fn run(mut conn: Connection, rx: Receiver<Command>) {
    let mut watchers: Vec<Watcher> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        // A watch must see exactly the changes committed after its initial list, so the
        // writes queued before it are committed (and published) first.
        let mut segment = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Watch(filter, events, reply) => {
                    run_segment(&mut conn, std::mem::take(&mut segment), &mut watchers);
                    let rows = list(&conn, &filter);
                    if rows.is_ok() {
                        watchers.push(Watcher { filter, tx: events });
                    }
                    let _ = reply.send(rows);
                }
                other => segment.push(other),
            }
        }
        run_segment(&mut conn, segment, &mut watchers);
    }
    log::debug!("store worker stopped");
}

enum Reply {
    Apply(oneshot::Sender<Result<Vec<Outcome>>>, Result<Vec<Outcome>>),
    Get(oneshot::Sender<Result<Option<Row>>>, Result<Option<Row>>),
    List(oneshot::Sender<Result<Vec<Row>>>, Result<Vec<Row>>),
}

fn run_segment(conn: &mut Connection, cmds: Vec<Command>, watchers: &mut Vec<Watcher>) {
    if cmds.is_empty() {
        return;
    }
    let mut replies = Vec::with_capacity(cmds.len());
    let mut events = Vec::new();
    let committed = (|| -> Result<()> {
        let mut tx = conn.transaction()?;
        for cmd in cmds {
            match cmd {
                Command::Apply(changes, reply) => {
                    let result = apply(&mut tx, changes, &mut events);
                    replies.push(Reply::Apply(reply, result));
                }
                Command::Get(key, reply) => replies.push(Reply::Get(reply, get(&tx, &key))),
                Command::List(filter, reply) => {
                    replies.push(Reply::List(reply, list(&tx, &filter)))
                }
                Command::Watch(..) => unreachable!("watches are split out of segments"),
            }
        }
        tx.commit()?;
        Ok(())
    })();
    if let Err(e) = committed {
        log::error!(
            "store commit failed, {} command(s) answered with an error: {e}",
            replies.len()
        );
        let msg = e.to_string();
        let fail = || Error::BadRequest(format!("commit failed: {msg}"));
        for reply in replies {
            match reply {
                Reply::Apply(r, _) => drop(r.send(Err(fail()))),
                Reply::Get(r, _) => drop(r.send(Err(fail()))),
                Reply::List(r, _) => drop(r.send(Err(fail()))),
            }
        }
        return;
    }
    for reply in replies {
        match reply {
            Reply::Apply(r, v) => drop(r.send(v)),
            Reply::Get(r, v) => drop(r.send(v)),
            Reply::List(r, v) => drop(r.send(v)),
        }
    }
    publish(watchers, events);
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

/// Applies one command's changes under a savepoint, so a failing change undoes the whole
/// command and nothing else in the batch.
fn apply(
    tx: &mut Transaction<'_>,
    changes: Vec<Change>,
    events: &mut Vec<Event>,
) -> Result<Vec<Outcome>> {
    let sp = tx.savepoint()?;
    let mut outcomes = Vec::with_capacity(changes.len());
    let mut new_events = Vec::new();
    for change in changes {
        let (outcome, event) = apply_one(&sp, change)?;
        outcomes.push(outcome);
        new_events.extend(event);
    }
    sp.commit()?;
    events.extend(new_events);
    Ok(outcomes)
}

fn apply_one(conn: &Connection, change: Change) -> Result<(Outcome, Option<Event>)> {
    let existing: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([&change.key], |r| r.get(0))
        .optional()?;
    let kind = change.kind.as_str().to_owned();
    let Some(value) = change.value else {
        let Some(old) = existing else {
            return Ok((Outcome::Ignored, None));
        };
        conn.prepare_cached("DELETE FROM meta WHERE key = ?1")?
            .execute([&change.key])?;
        let row = Row {
            key: change.key,
            kind,
            value: old,
        };
        return Ok((Outcome::Deleted, Some(Event::Deleted(Arc::new(row)))));
    };
    if let (Some(incoming), Some(old)) = (&change.resource_version, &existing)
        && let Some(stored) = stored_version(old)
        && is_older(incoming, &stored)
    {
        log::debug!(
            "ignoring {} at version {incoming}: {stored} is stored",
            change.key
        );
        return Ok((Outcome::Ignored, None));
    }
    let text = value.to_string();
    conn.prepare_cached("INSERT OR REPLACE INTO meta(key, type, value) VALUES (?1, ?2, ?3)")?
        .execute(params![change.key, kind, text])?;
    let row = Arc::new(Row {
        key: change.key,
        kind,
        value: text,
    });
    Ok(if existing.is_some() {
        (Outcome::Updated, Some(Event::Updated(row)))
    } else {
        (Outcome::Inserted, Some(Event::Inserted(row)))
    })
}

fn get(conn: &Connection, key: &str) -> Result<Option<Row>> {
    Ok(conn
        .prepare_cached("SELECT key, type, value FROM meta WHERE key = ?1")?
        .query_row([key], row)
        .optional()?)
}

fn list(conn: &Connection, filter: &Filter) -> Result<Vec<Row>> {
    let rows = match (&filter.kind, &filter.namespace) {
        (Some(kind), Some(ns)) => {
            // Keys of one namespace and type share the prefix `ns/type/`; '0' follows '/'.
            let lo = format!("{ns}/{kind}/");
            let hi = format!("{ns}/{kind}0");
            conn.prepare_cached(
                "SELECT key, type, value FROM meta WHERE key >= ?1 AND key < ?2 ORDER BY key",
            )?
            .query_map([lo, hi], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?
        }
        (Some(kind), None) => conn
            .prepare_cached("SELECT key, type, value FROM meta WHERE type = ?1 ORDER BY key")?
            .query_map([kind.as_str()], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        (None, _) => conn
            .prepare_cached("SELECT key, type, value FROM meta ORDER BY key")?
            .query_map([], row)?
            .filter(|r| r.as_ref().map_or(true, |r| filter.matches(r)))
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    Ok(rows)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        key: r.get(0)?,
        kind: r.get(1)?,
        value: r.get(2)?,
    })
}
