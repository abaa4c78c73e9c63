//! The manifest-folder source: ordinary multi-document Kubernetes YAML (Service, Endpoints,
//! Pod, Node; other kinds are ignored), re-read when a file changes.
//!
//! The folder is watched (inotify, through the `notify` crate), so a change is read within
//! milliseconds; it is also polled (every file's size and modification time), which works on
//! every filesystem, with the symlink swaps of a mounted ConfigMap, and when a watch cannot
//! be set up (inotify limits) or misses an event. Each document is parsed on
//! its own: a bad one is reported with its file and position and skipped, and the last good
//! version of that document stays in force, as does everything else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use beehive::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::derive::derive_endpoints;
use crate::error::{Error, Result};
use crate::object::{Kind, Object};
use crate::source::{Source, SourceEvent};

/// A file's identity for change detection.
type Stamp = (Option<SystemTime>, u64);

#[derive(Debug, Default)]
struct FileState {
    stamp: Stamp,
    /// Objects per document, by document index; `None` for a document never good.
    docs: Vec<Option<Vec<Object>>>,
}

/// Everything the folder holds after a scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// Objects by kind, derived Endpoints included.
    pub objects: HashMap<Kind, Vec<Object>>,
    /// Problems found in files that changed since the last scan.
    pub problems: Vec<Error>,
}

/// A folder of manifests and what was last read from it.
#[derive(Debug)]
pub struct ManifestFolder {
    dir: PathBuf,
    files: HashMap<PathBuf, FileState>,
    listing: Vec<(PathBuf, Stamp)>,
    scanned: bool,
}

impl ManifestFolder {
    /// A folder not read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestFolder {
            dir: dir.into(),
            files: HashMap::new(),
            listing: Vec::new(),
            scanned: false,
        }
    }

    /// Reads what changed since the last call. `Ok(None)` when nothing did; an error when
    /// the folder itself cannot be read (the last good state then stays in force).
    pub fn scan(&mut self) -> Result<Option<Scan>> {
        let mut listing = Vec::new();
        walk(&self.dir, &mut listing)?;
        listing.sort();
        if self.scanned && listing == self.listing {
            return Ok(None);
        }
        self.scanned = true;
        let mut problems = Vec::new();
        let mut files = HashMap::new();
        for (path, stamp) in &listing {
            let mut state = self.files.remove(path).unwrap_or_default();
            if state.stamp != *stamp || state.docs.is_empty() {
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        state.docs = parse_file(path, &text, &state.docs, &mut problems);
                        state.stamp = *stamp;
                    }
                    // Unreadable now: keep what it last gave.
                    Err(e) => problems.push(Error::Io {
                        path: path.clone(),
                        reason: e.to_string(),
                    }),
                }
            }
            files.insert(path.clone(), state);
        }
        self.files = files;
        self.listing = listing;
        Ok(Some(Scan {
            objects: self.objects(),
            problems,
        }))
    }

    fn objects(&self) -> HashMap<Kind, Vec<Object>> {
        let mut by_kind: HashMap<Kind, Vec<Object>> = HashMap::new();
        let mut paths: Vec<&PathBuf> = self.files.keys().collect();
        paths.sort();
        for path in paths {
            for obj in self.files[path].docs.iter().flatten().flatten() {
                by_kind.entry(obj.kind).or_default().push(obj.clone());
            }
        }
        let derived = derive_endpoints(
            by_kind.get(&Kind::Service).map_or(&[], Vec::as_slice),
            by_kind.get(&Kind::Endpoints).map_or(&[], Vec::as_slice),
            by_kind.get(&Kind::Pod).map_or(&[], Vec::as_slice),
        );
        by_kind.entry(Kind::Endpoints).or_default().extend(derived);
        by_kind
    }
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, Stamp)>) -> Result<()> {
    let io = |e: std::io::Error| Error::Io {
        path: dir.to_owned(),
        reason: e.to_string(),
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        // Hidden entries include a ConfigMap mount's ..data links: the visible names
        // already point through them.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push((path, (meta.modified().ok(), meta.len())));
        }
    }
    Ok(())
}

/// Splits YAML text into documents at `---` lines, with the line each starts on.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            docs.push((i + 2, String::new()));
        } else {
            let doc = &mut docs.last_mut().expect("never empty").1;
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs
}

fn parse_file(
    path: &Path,
    text: &str,
    previous: &[Option<Vec<Object>>],
    problems: &mut Vec<Error>,
) -> Vec<Option<Vec<Object>>> {
    documents(text)
        .into_iter()
        .enumerate()
        .map(|(index, (first_line, doc))| match parse_document(&doc) {
            Ok(objects) => Some(objects),
            Err((line, column, reason)) => {
                let err = Error::BadDocument {
                    file: path.to_owned(),
                    line: first_line + line.saturating_sub(1),
                    column,
                    reason,
                };
                log::warn!("skipping a manifest document: {err}");
                problems.push(err);
                previous.get(index).cloned().flatten()
            }
        })
        .collect()
}

/// The objects of one document (a `List` gives several); the error carries the line and
/// column within the document.
fn parse_document(doc: &str) -> Result<Vec<Object>, (usize, usize, String)> {
    let value: Value = serde_yaml_ng::from_str(doc).map_err(|e| {
        let (line, column) = e.location().map_or((1, 0), |l| (l.line(), l.column()));
        (line, column, e.to_string())
    })?;
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Object(ref o)
            if o.get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && o.get("items").is_some_and(Value::is_array) =>
        {
            value["items"].as_array().cloned().unwrap_or_default()
        }
        Value::Object(_) => vec![value],
        _ => return Err((1, 0, "a document must be a Kubernetes object".into())),
    };
    let mut objects = Vec::new();
    for item in items {
        match Object::from_value(item, true) {
            Ok(Some(obj)) => objects.push(obj),
            Ok(None) => {}
            Err(reason) => return Err((1, 0, reason)),
        }
    }
    Ok(objects)
}

/// Entry points for the fuzz targets in `fuzz/` (not an API: it may change at any time).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Reads one file's text as a scan does: the objects of its good documents, with the
    /// Endpoints derived from them, and the problems of its bad ones.
    pub fn parse(text: &str) -> (Vec<Object>, Vec<Error>) {
        let mut problems = Vec::new();
        let docs = parse_file(Path::new("fuzz.yaml"), text, &[], &mut problems);
        let mut objects: Vec<Object> = docs.into_iter().flatten().flatten().collect();
        let of =
            |kind| -> Vec<Object> { objects.iter().filter(|o| o.kind == kind).cloned().collect() };
        let derived = derive_endpoints(&of(Kind::Service), &of(Kind::Endpoints), &of(Kind::Pod));
        objects.extend(derived);
        (objects, problems)
    }
}

/// The manifest folder as a [`Source`].
pub struct ManifestSource {
    folder: ManifestFolder,
    interval: Duration,
}

impl ManifestSource {
    /// Polls `dir` every `interval`.
    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> Self {
        ManifestSource {
            folder: ManifestFolder::new(dir),
            interval,
        }
    }
}

#[async_trait]
impl Source for ManifestSource {
    fn name(&self) -> &'static str {
        "manifests"
    }

    async fn run(self: Box<Self>, events: mpsc::Sender<SourceEvent>, stop: CancellationToken) {
        let ManifestSource {
            mut folder,
            interval,
        } = *self;
        let mut unreadable = false;
        // One pending wake-up is enough: a scan reads everything that changed.
        let (wake, mut woken) = mpsc::channel::<()>(1);
        // Full means a wake-up is already pending.
        let _watcher = watch(folder.dir.clone(), move |_| {
            let _ = wake.try_send(());
        });
        loop {
            // Reading files blocks: keep it off the runtime's workers.
            let scanned = tokio::task::spawn_blocking(move || {
                let result = folder.scan();
                (folder, result)
            })
            .await;
            let result;
            (folder, result) = match scanned {
                Ok(done) => done,
                Err(e) => {
                    log::error!("manifest scan failed: {e}");
                    return;
                }
            };
            match result {
                Ok(Some(scan)) => {
                    unreadable = false;
                    let mut objects = scan.objects;
                    for kind in Kind::ALL {
                        let set = objects.remove(&kind).unwrap_or_default();
                        if events.send(SourceEvent::Replace(kind, set)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    if !unreadable {
                        log::error!("manifest folder unreadable, keeping the last state: {e}");
                    }
                    unreadable = true;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = woken.recv() => {}
            }
        }
    }
}

/// Watches `dir` (recursively) and calls `on_change` with every event that may be a change
/// of its content (see [`is_change`]); `None` when the watch cannot be set up, and the poll
/// alone then notices changes.
fn watch(
    dir: PathBuf,
    on_change: impl Fn(notify::Event) + Send + 'static,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && is_change(&event)
        {
            on_change(event);
        }
    })
    .map_err(|e| log::warn!("manifest folder: no change notifications ({e}); polling only"))
    .ok()?;
    match watcher.watch(&dir, notify::RecursiveMode::Recursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            log::warn!(
                "manifest folder {}: cannot watch it ({e}); polling only",
                dir.display()
            );
            None
        }
    }
}

/// Whether `event` may mean that the folder's content changed. Opening, reading and closing
/// without writing do not: a scan does all three, and waking on them made every scan wake
/// the next, a loop of hundreds of scans a second in an idle cloudcore.
fn is_change(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_is_read_when_notified_not_at_the_next_poll() {
        let dir = tempfile::tempdir().unwrap();
        // A poll this slow would take a minute: only the watch can be this quick.
        let source = Box::new(ManifestSource::new(dir.path(), Duration::from_secs(60)));
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let running = tokio::spawn(source.run(tx, stop.clone()));
        let services = |event: Option<SourceEvent>| match event {
            Some(SourceEvent::Replace(Kind::Service, set)) => Some(set.len()),
            _ => None,
        };
        // The first scan (of the empty folder) comes at once.
        let mut first = None;
        while first.is_none() {
            first = services(rx.recv().await);
        }
        assert_eq!(first, Some(0));
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
             spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n",
        )
        .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(n) = services(rx.recv().await)
                    && n == 1
                {
                    return;
                }
            }
        })
        .await;
        stop.cancel();
        let _ = running.await;
        seen.expect("the new Service was read long before the next poll");
    }

    /// What a scan does to the folder (open it, list it, read its files) is no change: only
    /// the file written afterwards wakes the scan loop.
    #[test]
    fn a_scan_of_the_folder_does_not_wake_the_next_scan() {
        let dir = tempfile::tempdir().unwrap();
        let doc = "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.0.0.1}\n";
        std::fs::write(dir.path().join("a.yaml"), doc).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let _watcher = watch(dir.path().to_owned(), move |e| {
            let _ = tx.send(e);
        })
        .expect("a watch on a temporary folder");
        let mut folder = ManifestFolder::new(dir.path());
        assert!(folder.scan().unwrap().is_some());
        std::fs::read_to_string(dir.path().join("a.yaml")).unwrap();
        assert!(folder.scan().unwrap().is_none(), "nothing changed");
        // inotify reports in order: whatever the scans raised comes before this file's events.
        let written = dir.path().join("b.yaml");
        std::fs::write(&written, doc).unwrap();
        let first = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the write was reported");
        assert!(
            first.paths.contains(&written),
            "a scan's own access woke the loop: {first:?}"
        );
    }

    #[test]
    fn documents_split_at_separator_lines_with_their_first_line() {
        let docs = documents("a: 1\n---\nb: 2\n--- # c\nc: 3\n");
        let firsts: Vec<usize> = docs.iter().map(|d| d.0).collect();
        assert_eq!(firsts, [1, 3, 5]);
        assert_eq!(docs[1].1, "b: 2\n");
    }

    #[test]
    fn a_bad_document_is_located_and_its_last_good_version_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.yaml");
        let good = "kind: Service\nmetadata: {name: a}\n---\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 10.0.0.2}\n";
        std::fs::write(&file, good).unwrap();
        let mut folder = ManifestFolder::new(dir.path());
        let scan = folder.scan().unwrap().unwrap();
        assert_eq!(scan.objects[&Kind::Service].len(), 2);
        assert!(folder.scan().unwrap().is_none(), "nothing changed");

        // Document 2 broken (a tab where YAML wants spaces), document 1 changed.
        let bad = "kind: Service\nmetadata: {name: a, labels: {x: y}}\n---\nkind: Service\nmetadata: {name: b}\nspec:\n\t clusterIP: [\n";
        std::fs::write(&file, bad).unwrap();
        let scan = folder.scan().unwrap().unwrap();
        assert_eq!(scan.problems.len(), 1);
        let text = scan.problems[0].to_string();
        assert!(text.starts_with(&format!("{}:", file.display())), "{text}");
        let line: usize = text.split(':').nth(1).unwrap().parse().unwrap();
        assert!((4..=8).contains(&line), "points into document 2: {text}");
        let services = &scan.objects[&Kind::Service];
        let b = services.iter().find(|s| s.name == "b").expect("b kept");
        assert_eq!(b.value["spec"]["clusterIP"], "10.0.0.2");
        let a = services.iter().find(|s| s.name == "a").unwrap();
        assert_eq!(
            a.value["metadata"]["labels"]["x"], "y",
            "good documents still apply"
        );
    }
}
