//! What each node may hold, remembered across cloudcore restarts (KubeEdge's ObjectSync).
//!
//! A KubeEdge edgecore never reports its holdings on connect, so without a record a node
//! that was away would be sent everything and never told of what was deleted meanwhile.
//! The record is an OVER-approximation of a node's holdings, so the deletes computed from
//! it are exact: a path is recorded (version unknown, `""`) before a change for it is
//! queued, its version is filled in when the node ACKs that very message, and it is removed
//! only when the node ACKs its delete.
//!
//! Each row also names the message that last touched it: an ACK changes the row only when
//! it is for that message, so the ACK of a version superseded by a newer queued one (or of
//! a delete followed by a new insert) can never shrink the record below what the node may
//! get. That also makes ACK writes order-free, so they are buffered and written in batches;
//! losing them in a crash only leaves rows less refined (`""` or still present), which costs
//! a resend or a delete of something absent, never a missed delete.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use compact_str::CompactString;
use proto::MsgId;
use rusqlite::{Connection, params};

use crate::error::{Error, Result};

/// ACK records buffered before they are written without waiting for the next flush.
const ACK_BATCH: usize = 1024;

/// What a queued message does to a node's holdings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The message's id (an ACK names it as its parent).
    pub id: MsgId,
    /// The object's resourceVersion in the message.
    pub rv: CompactString,
    /// True for a delete, false for an insert or update.
    pub delete: bool,
}

/// A change the node ACKed, waiting to be written.
#[derive(Debug)]
struct Acked {
    node: CompactString,
    path: CompactString,
    change: Change,
}

/// The per-node record `node → {edge path → resourceVersion}` in SQLite.
pub struct ObjectSync {
    conn: Mutex<Connection>,
    acks: Mutex<Vec<Acked>>,
    /// Nodes for which a write failed: their record may miss a path, so it is not handed
    /// out until cloudcore restarts with a writable file.
    tainted: Mutex<HashSet<CompactString>>,
}

impl std::fmt::Debug for ObjectSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSync").finish_non_exhaustive()
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::ObjectSync {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

impl ObjectSync {
    /// Opens (creating it and its folder, 0700, if needed) the record at `path`; an empty
    /// path keeps it in memory only (tests).
    pub fn open(path: &Path) -> Result<Self> {
        if path.as_os_str().is_empty() {
            let conn = Connection::open_in_memory().map_err(|e| db_err(path, e))?;
            return Self::with(conn).map_err(|e| db_err(path, e));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| db_err(dir, e))?;
        }
        let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
        // WAL with NORMAL sync survives a killed process (the WAL is in the OS's hands once
        // written), which is the failure that matters here; a power cut may lose the last
        // rows, and those rows only refine the record of a cloud that is restarting anyway.
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
            .map_err(|e| db_err(path, e))?;
        Self::with(conn).map_err(|e| db_err(path, e))
    }

    fn with(conn: Connection) -> rusqlite::Result<Self> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS held(
                node TEXT NOT NULL,
                path TEXT NOT NULL,
                rv TEXT NOT NULL,
                msg TEXT NOT NULL,
                PRIMARY KEY(node, path)
            ) WITHOUT ROWID;",
        )?;
        Ok(ObjectSync {
            conn: Mutex::new(conn),
            acks: Mutex::default(),
            tainted: Mutex::default(),
        })
    }

    /// Records, before they are queued, changes for nodes: `(node, path, change)`. An
    /// insert or update makes the path held at an unknown version, unless the node already
    /// ACKed that very version; a delete keeps the row until its ACK.
    pub fn queued<'a>(&self, changes: impl IntoIterator<Item = (&'a str, &'a str, &'a Change)>) {
        let changes: Vec<_> = changes.into_iter().collect();
        if changes.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut *self.acks.lock().expect("acks poisoned"));
        let mut conn = self.conn.lock().expect("object sync poisoned");
        let written = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            // Earlier ACKs first: each applies only to its own message anyway.
            write_acks(&tx, &acks)?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO held(node, path, rv, msg) VALUES(?1, ?2, '', ?4)
                     ON CONFLICT(node, path) DO UPDATE
                     SET rv = CASE WHEN rv = ?3 THEN rv ELSE '' END, msg = ?4",
                )?;
                let mut delete =
                    tx.prepare_cached("UPDATE held SET msg = ?3 WHERE node = ?1 AND path = ?2")?;
                let mut buf = [0u8; 36];
                for (node, path, change) in &changes {
                    let id = change.id.as_str(&mut buf);
                    if change.delete {
                        delete.execute(params![node, path, id])?;
                    } else {
                        upsert.execute(params![node, path, change.rv.as_str(), id])?;
                    }
                }
            }
            tx.commit()
        })();
        drop(conn);
        if let Err(e) = written {
            self.failed(changes.iter().map(|(n, _, _)| *n), &e);
        }
    }

    /// Notes that `node` ACKed `change` for `path` (written with the next batch).
    pub fn acked(&self, node: &str, path: &str, change: Change) {
        let full = {
            let mut acks = self.acks.lock().expect("acks poisoned");
            acks.push(Acked {
                node: node.into(),
                path: path.into(),
                change,
            });
            acks.len() >= ACK_BATCH
        };
        if full {
            self.flush();
        }
    }

    /// Writes the buffered ACKs.
    pub fn flush(&self) {
        let acks = std::mem::take(&mut *self.acks.lock().expect("acks poisoned"));
        if acks.is_empty() {
            return;
        }
        let mut conn = self.conn.lock().expect("object sync poisoned");
        let written = conn.transaction().and_then(|tx| {
            write_acks(&tx, &acks)?;
            tx.commit()
        });
        drop(conn);
        // A lost ACK only leaves a row less refined: logged, not tainting.
        if let Err(e) = written {
            static LOG: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(10));
            LOG.warn(format_args!("object sync: cannot record ACKs: {e}"));
        }
    }

    /// What `node` may hold (path → version, `""` when unknown), or `None` when the record
    /// does not know the node (or lost a write for it).
    pub fn held(&self, node: &str) -> Option<BTreeMap<String, String>> {
        self.flush();
        if self
            .tainted
            .lock()
            .expect("tainted poisoned")
            .contains(node)
        {
            return None;
        }
        let conn = self.conn.lock().expect("object sync poisoned");
        let rows = (|| -> rusqlite::Result<BTreeMap<String, String>> {
            let mut stmt = conn.prepare_cached("SELECT path, rv FROM held WHERE node = ?1")?;
            stmt.query_map([node], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })();
        match rows {
            Ok(rows) if rows.is_empty() => None,
            Ok(rows) => Some(rows),
            Err(e) => {
                log::warn!("object sync: cannot read node {node}'s record: {e}");
                None
            }
        }
    }

    fn failed<'a>(&self, nodes: impl Iterator<Item = &'a str>, e: &rusqlite::Error) {
        static LOG: beehive::Throttle = beehive::Throttle::new(Duration::from_secs(10));
        LOG.warn(format_args!(
            "object sync: cannot record queued changes ({e}): the nodes concerned get \
             everything on their next connect"
        ));
        let mut tainted = self.tainted.lock().expect("tainted poisoned");
        for node in nodes {
            tainted.insert(node.into());
        }
    }
}

fn write_acks(tx: &rusqlite::Transaction<'_>, acks: &[Acked]) -> rusqlite::Result<()> {
    if acks.is_empty() {
        return Ok(());
    }
    let mut version =
        tx.prepare_cached("UPDATE held SET rv = ?3 WHERE node = ?1 AND path = ?2 AND msg = ?4")?;
    let mut gone =
        tx.prepare_cached("DELETE FROM held WHERE node = ?1 AND path = ?2 AND msg = ?3")?;
    let mut buf = [0u8; 36];
    for a in acks {
        let (node, path) = (a.node.as_str(), a.path.as_str());
        let id = a.change.id.as_str(&mut buf);
        if a.change.delete {
            gone.execute(params![node, path, id])?;
        } else {
            version.execute(params![node, path, a.change.rv.as_str(), id])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, rv: &str) -> Change {
        Change {
            id: MsgId::from(id),
            rv: rv.into(),
            delete: false,
        }
    }

    fn delete(id: &str) -> Change {
        Change {
            id: MsgId::from(id),
            rv: "".into(),
            delete: true,
        }
    }

    fn held(s: &ObjectSync, node: &str) -> Vec<(String, String)> {
        s.held(node).unwrap_or_default().into_iter().collect()
    }

    fn pair(path: &str, rv: &str) -> (String, String) {
        (path.to_owned(), rv.to_owned())
    }

    const A: &str = "default/service/a";

    #[test]
    fn a_queued_object_is_held_at_an_unknown_version_until_its_ack() {
        let s = ObjectSync::open(Path::new("")).unwrap();
        assert_eq!(s.held("n1"), None, "an unknown node");
        let c1 = change("m1", "1");
        s.queued([("n1", A, &c1)]);
        assert_eq!(held(&s, "n1"), [pair(A, "")]);
        s.acked("n1", A, c1);
        assert_eq!(held(&s, "n1"), [pair(A, "1")]);
        // The same version again keeps what the node ACKed; a new one makes it unknown.
        let again = change("m2", "1");
        s.queued([("n1", A, &again)]);
        assert_eq!(held(&s, "n1"), [pair(A, "1")]);
        let c3 = change("m3", "3");
        s.queued([("n1", A, &c3)]);
        assert_eq!(held(&s, "n1"), [pair(A, "")]);
        assert_eq!(s.held("n2"), None, "nodes are apart");
    }

    #[test]
    fn an_ack_of_a_superseded_message_changes_nothing() {
        let s = ObjectSync::open(Path::new("")).unwrap();
        let (c1, c2) = (change("m1", "1"), change("m2", "2"));
        s.queued([("n1", A, &c1)]);
        s.queued([("n1", A, &c2)]);
        s.acked("n1", A, c1);
        assert_eq!(held(&s, "n1"), [pair(A, "")], "v2 may reach the node");
        // A delete, then a new insert before the delete's ACK: the row must stay.
        let (d, c4) = (delete("m3"), change("m4", "4"));
        s.queued([("n1", A, &d)]);
        s.queued([("n1", A, &c4)]);
        s.acked("n1", A, d);
        assert_eq!(held(&s, "n1"), [pair(A, "")]);
    }

    #[test]
    fn a_delete_keeps_the_row_until_its_ack() {
        let s = ObjectSync::open(Path::new("")).unwrap();
        let c1 = change("m1", "1");
        let b = "default/service/b";
        let cb = change("mb", "7");
        s.queued([("n1", A, &c1), ("n1", b, &cb)]);
        s.acked("n1", A, c1);
        let d = delete("m2");
        s.queued([("n1", A, &d)]);
        assert_eq!(held(&s, "n1"), [pair(A, "1"), pair(b, "")]);
        s.acked("n1", A, d);
        assert_eq!(held(&s, "n1"), [pair(b, "")]);
        // A delete of something never recorded records nothing.
        let d = delete("m3");
        s.queued([("n1", "default/service/z", &d)]);
        assert_eq!(held(&s, "n1"), [pair(b, "")]);
    }

    #[test]
    fn the_record_survives_a_reopen_and_its_folder_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/object-sync.db");
        {
            let s = ObjectSync::open(&path).unwrap();
            let (c1, c2) = (change("m1", "1"), change("m2", "2"));
            s.queued([("n1", A, &c1), ("n2", A, &c2)]);
            s.acked("n1", A, c1);
            // ACKs are buffered; the hub's timer writes them.
            s.flush();
        }
        let s = ObjectSync::open(&path).unwrap();
        assert_eq!(held(&s, "n1"), [pair(A, "1")]);
        assert_eq!(held(&s, "n2"), [pair(A, "")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_record_that_cannot_be_opened_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let err = ObjectSync::open(&dir.path().join("file/object-sync.db"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("object sync record"), "{err}");
    }
}
