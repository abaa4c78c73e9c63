//! Numeric resourceVersions for every object the edge is sent, persisted so they only grow.
//!
//! Sources version objects in different ways: an API server's resourceVersions, a hash of
//! the content for manifest files and derived Endpoints. KubeEdge's metaServer parses a
//! resourceVersion as an integer (a hash becomes 0, which breaks its clients' watch
//! resumption), and an edge compares numbers to drop stale updates, so an object that moves
//! from one source to another (a Service's derived Endpoints replaced by explicit ones)
//! must never get a smaller number. The ledger therefore gives the edge its own versions:
//! each object keeps the number it was given while its source version (or content hash) is
//! unchanged, and gets a new, larger one when that changes.
//!
//! New numbers are at least the wall clock in microseconds, and at least one more than any
//! given before. The file keeps unchanged objects on their numbers across restarts (no
//! resend to every node); if the file is lost, the clock floor still makes new numbers
//! larger than those the edges hold, short of a clock set back or a burst of more than one
//! change per microsecond just before the loss.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::object::{Kind, ObjKey, Object, content_version};

/// An object's source version and the number the edge was given for it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    source: String,
    rv: u64,
}

/// The ledger: object → (source version, edge version).
pub struct Versions {
    path: PathBuf,
    /// Behind a lock only so the controller, held across awaits, stays `Sync`.
    conn: Mutex<Connection>,
    entries: HashMap<ObjKey, Entry>,
    last: u64,
    /// Set after a failed write: numbers are still handed out (from memory and the clock),
    /// and the failure is logged once, not per object.
    write_failed: bool,
}

impl std::fmt::Debug for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versions")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Versions {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "Service",
        Kind::Endpoints => "Endpoints",
        Kind::Pod => "Pod",
        Kind::Node => "Node",
    }
}

impl Versions {
    /// Opens (creating it and its folder, 0700, if needed) the ledger at `path`; an empty
    /// path keeps it in memory only.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = if path.as_os_str().is_empty() {
            Connection::open_in_memory().map_err(|e| db_err(path, e))?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| db_err(dir, e))?;
            }
            let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
            // A killed process loses nothing once the WAL is written; a power cut may lose
            // the last numbers, and the clock floor keeps the next ones larger anyway.
            conn.pragma_update(None, "journal_mode", "WAL")
                .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
                .map_err(|e| db_err(path, e))?;
            conn
        };
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS versions(
                kind TEXT NOT NULL,
                namespace TEXT NOT NULL,
                name TEXT NOT NULL,
                source TEXT NOT NULL,
                rv INTEGER NOT NULL,
                PRIMARY KEY(kind, namespace, name)
            ) WITHOUT ROWID;",
        )
        .map_err(|e| db_err(path, e))?;
        let mut entries = HashMap::new();
        let mut last = 0u64;
        {
            let mut rows = conn
                .prepare("SELECT kind, namespace, name, source, rv FROM versions")
                .map_err(|e| db_err(path, e))?;
            let read = rows
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .map_err(|e| db_err(path, e))?;
            for row in read {
                let (kind, namespace, name, source, rv) = row.map_err(|e| db_err(path, e))?;
                let (Some(kind), Ok(rv)) = (Kind::from_k8s(&kind), u64::try_from(rv)) else {
                    continue;
                };
                last = last.max(rv);
                entries.insert((kind, namespace, name), Entry { source, rv });
            }
        }
        Ok(Versions {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            entries,
            last,
            write_failed: false,
        })
    }

    /// How many objects the ledger holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the ledger holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The object with the edge's version in `rv` and `metadata.resourceVersion`.
    pub fn stamp(&mut self, obj: Object) -> Object {
        self.stamp_all(vec![obj]).pop().expect("one in, one out")
    }

    /// Every object stamped, new numbers written in one transaction.
    pub fn stamp_all(&mut self, objects: Vec<Object>) -> Vec<Object> {
        let mut fresh = Vec::new();
        let stamped = objects
            .into_iter()
            .map(|mut obj| {
                if obj.kind == Kind::Node {
                    return obj;
                }
                let source = if obj.rv.is_empty() {
                    content_version(&obj.value)
                } else {
                    obj.rv.clone()
                };
                let key = obj.key();
                let rv = match self.entries.get(&key) {
                    Some(e) if e.source == source => e.rv,
                    _ => {
                        self.last = (self.last + 1).max(now_micros());
                        let entry = Entry {
                            source,
                            rv: self.last,
                        };
                        fresh.push((key.clone(), entry.clone()));
                        self.entries.insert(key, entry);
                        self.last
                    }
                };
                obj.rv = rv.to_string();
                let mut value = Arc::unwrap_or_clone(obj.value);
                if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".into(), Value::String(obj.rv.clone()));
                }
                obj.value = Arc::new(value);
                obj
            })
            .collect();
        if !fresh.is_empty() {
            let written = self.write(|tx| {
                let mut up = tx.prepare_cached(
                    "INSERT OR REPLACE INTO versions(kind, namespace, name, source, rv)
                     VALUES(?1, ?2, ?3, ?4, ?5)",
                )?;
                for ((kind, ns, name), e) in &fresh {
                    let rv = i64::try_from(e.rv).unwrap_or(i64::MAX);
                    up.execute(params![kind_name(*kind), ns, name, e.source, rv])?;
                }
                Ok(())
            });
            self.note(written);
        }
        stamped
    }

    /// Drops an object that is gone: if it comes back, it gets a new number.
    pub fn forget(&mut self, key: &ObjKey) {
        if self.entries.remove(key).is_some() {
            let written = self.write(|tx| {
                tx.prepare_cached(
                    "DELETE FROM versions WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                )?
                .execute(params![kind_name(key.0), key.1, key.2])?;
                Ok(())
            });
            self.note(written);
        }
    }

    /// Drops every object of `kind` not in `keep` (objects deleted while cloudcore was
    /// down, seen missing from the source's first full list).
    pub fn retain(&mut self, kind: Kind, keep: &[ObjKey]) {
        let keep: std::collections::HashSet<&ObjKey> = keep.iter().collect();
        let gone: Vec<ObjKey> = self
            .entries
            .keys()
            .filter(|k| k.0 == kind && !keep.contains(k))
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        for key in &gone {
            self.entries.remove(key);
        }
        let written = self.write(|tx| {
            let mut del = tx.prepare_cached(
                "DELETE FROM versions WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
            )?;
            for (kind, ns, name) in &gone {
                del.execute(params![kind_name(*kind), ns, name])?;
            }
            Ok(())
        });
        self.note(written);
    }

    fn write(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock().expect("versions ledger poisoned");
        let tx = conn.transaction()?;
        f(&tx)?;
        tx.commit()
    }

    fn note(&mut self, written: rusqlite::Result<()>) {
        match written {
            Ok(()) if self.write_failed => {
                log::info!(
                    "resourceVersion ledger {} written again",
                    self.path.display()
                );
                self.write_failed = false;
            }
            Ok(()) => {}
            Err(e) if !self.write_failed => {
                log::error!(
                    "resourceVersion ledger {}: {e}; versions stay numeric and growing, \
                     but unchanged objects may be resent after a restart",
                    self.path.display()
                );
                self.write_failed = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, port: u16, rv: &str) -> Object {
        let mut v = json!({"kind": "Service", "metadata": {"name": name}, "spec": {"port": port}});
        if !rv.is_empty() {
            v["metadata"]["resourceVersion"] = json!(rv);
        }
        Object::from_value(v, rv.is_empty()).unwrap().unwrap()
    }

    fn num(o: &Object) -> u64 {
        assert_eq!(o.value["metadata"]["resourceVersion"], json!(o.rv));
        o.rv.parse().expect("numeric")
    }

    #[test]
    fn versions_are_numeric_and_grow_with_changes_only() {
        let mut v = Versions::open(Path::new("")).unwrap();
        let a1 = num(&v.stamp(svc("a", 80, "")));
        assert_eq!(
            num(&v.stamp(svc("a", 80, ""))),
            a1,
            "same content, same number"
        );
        let a2 = num(&v.stamp(svc("a", 81, "")));
        assert!(a2 > a1);
        // A source with its own versions: a smaller API number still yields a larger one.
        let a3 = num(&v.stamp(svc("a", 81, "5")));
        assert!(a3 > a2);
        assert_eq!(num(&v.stamp(svc("a", 81, "5"))), a3);
        v.forget(&svc("a", 81, "5").key());
        assert!(
            num(&v.stamp(svc("a", 81, "5"))) > a3,
            "a new object, a new number"
        );
    }

    #[test]
    fn numbers_survive_a_restart_and_stay_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/versions.db");
        let (a, b) = {
            let mut v = Versions::open(&path).unwrap();
            let s = v.stamp_all(vec![svc("a", 80, ""), svc("b", 80, "")]);
            (num(&s[0]), num(&s[1]))
        };
        let mut v = Versions::open(&path).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(num(&v.stamp(svc("a", 80, ""))), a, "unchanged: not resent");
        assert!(num(&v.stamp(svc("b", 99, ""))) > a.max(b));
        v.retain(Kind::Service, &[svc("a", 80, "").key()]);
        drop(v);
        let v = Versions::open(&path).unwrap();
        assert_eq!(v.len(), 1, "b dropped for good");
    }

    #[test]
    fn a_lost_ledger_still_gives_larger_numbers() {
        let mut first = Versions::open(Path::new("")).unwrap();
        let old = num(&first.stamp(svc("a", 80, "")));
        let mut second = Versions::open(Path::new("")).unwrap();
        // Both come from the clock: the second cannot be behind the first.
        assert!(num(&second.stamp(svc("a", 80, ""))) >= old);
    }
}
