//! Who may use the metamanager socket: root, the server's own user and members of
//! `socketGroup`. Other users are played by real processes under other uids (`setpriv`
//! from util-linux running python3), so this needs root; without it the test says why and
//! passes.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metamanager::server::{self, Server};
use metamanager::{MetaManagerConfig, Store};
use proto::Message;
use proto::metaclient::MetaClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
/// A gid no account here uses: members are made with `setpriv`, so it needs no /etc/group line.
const GROUP: u32 = 4242;
/// `nobody`.
const STRANGER: u32 = 65534;
/// The interpreter the other uids run: a system path, since a per-user install (pyenv under
/// /root) is out of their reach.
const PYTHON: &str = "/usr/bin/python3";

/// Connects to the socket in argv[1]; with argv[2] == "ping" sends a ping. Prints each frame
/// it reads as "<operation> <content as JSON>" (stopping after the first when it pinged),
/// then "END" when the server closes the connection.
const CLIENT: &str = r#"
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
def read_exact(n):
    data = b""
    while len(data) < n:
        try:
            chunk = s.recv(n - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data
if sys.argv[2] == "ping":
    ping = json.dumps({"header": {"msg_id": "p1", "timestamp": 1}, "route": {"operation": "ping"}}).encode()
    s.sendall(struct.pack(">I", len(ping)) + ping)
while True:
    head = read_exact(4)
    body = head and read_exact(struct.unpack(">I", head)[0])
    if body is None:
        print("END")
        break
    m = json.loads(body)
    print(m["route"]["operation"], json.dumps(m.get("content")), flush=True)
    if sys.argv[2] == "ping":
        break
"#;

/// Keeps every warning, so the test can find the refusal's.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static WARNINGS: Capture = Capture(Mutex::new(Vec::new()));

fn warnings_about(what: &str) -> Vec<String> {
    let all = WARNINGS.0.lock().unwrap();
    all.iter().filter(|w| w.contains(what)).cloned().collect()
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("not root: cannot run clients under other uids".into());
    }
    if !Path::new(PYTHON).exists() {
        return Some(format!("{PYTHON} is missing"));
    }
    match std::process::Command::new("setpriv")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => None,
        _ => Some("setpriv (util-linux) is missing".into()),
    }
}

/// A server on its own socket; stopped when dropped.
struct Bed {
    server: Arc<Server>,
    sock: PathBuf,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Bed {
    fn start(socket_group: &str) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        // Other uids must be able to reach the socket through its folder.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("mm.sock");
        let config = MetaManagerConfig {
            db_path: dir.path().join("edge.db"),
            socket_path: sock.clone(),
            socket_group: socket_group.into(),
            ..MetaManagerConfig::default()
        };
        let store = Store::open(&config.db_path).unwrap();
        let listener = server::bind_for_group(&sock, config.socket_gid().unwrap()).unwrap();
        let server = Server::new(store, None, &config).unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(server.clone().serve(listener, stop.clone()));
        Bed {
            server,
            sock,
            stop,
            _dir: dir,
        }
    }

    /// Opens the socket file to everyone, so that a client the file mode would keep out
    /// reaches the server and the server's own check is what turns it away.
    fn open_to_all(&self) {
        std::fs::set_permissions(&self.sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    }

    /// Runs the python client under `setpriv` with `ids` (e.g. `--reuid=65534`); its lines.
    async fn client_as(&self, ids: &[String], mode: &str) -> Vec<String> {
        let child = tokio::process::Command::new("setpriv")
            .args(ids)
            .args([PYTHON, "-c", CLIENT])
            .arg(&self.sock)
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("the client finishes")
            .unwrap();
        assert!(
            out.status.success(),
            "client {ids:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn ids(uid: u32, gid: u32, groups: Option<u32>) -> Vec<String> {
    let mut ids = vec![format!("--reuid={uid}"), format!("--regid={gid}")];
    ids.push(groups.map_or_else(|| "--clear-groups".to_owned(), |g| format!("--groups={g}")));
    ids
}

async fn write_frame(s: &mut UnixStream, payload: &[u8]) {
    s.write_all(&(payload.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(payload).await.unwrap();
}

async fn read_frame(s: &mut UnixStream) -> Option<Message> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.ok()?;
    Some(Message::from_json(&buf).unwrap())
}

const PING: &[u8] = br#"{"header":{"msg_id":"r1","timestamp":1},"route":{"operation":"ping"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_our_user_and_the_socket_group_are_served() {
    if let Some(why) = unsupported() {
        println!("skipped: {why}");
        return;
    }
    let _ = log::set_logger(&WARNINGS);
    log::set_max_level(log::LevelFilter::Warn);

    let bed = Bed::start(&GROUP.to_string());
    let meta = std::fs::symlink_metadata(&bed.sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), GROUP);
    bed.open_to_all();

    // Root (this process, also the server's own user) is served, and keeps its connection.
    let mut mine = UnixStream::connect(&bed.sock).await.unwrap();
    write_frame(&mut mine, PING).await;
    assert_eq!(read_frame(&mut mine).await.unwrap().operation(), "response");
    MetaClient::connect(&bed.sock, WAIT)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();

    // A stranger gets one error frame and is disconnected without having sent anything.
    let lines = bed
        .client_as(&ids(STRANGER, STRANGER, None), "listen")
        .await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("error ") && lines[0].contains("permission denied"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "END");
    assert_eq!(bed.server.refused_peers(), 1);
    let warned = warnings_about("refused a client");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains(&format!("uid {STRANGER}, gid {STRANGER}, pid ")),
        "{warned:?}"
    );

    // Members of the group are served, by primary group and by a supplementary one.
    let by_primary = bed.client_as(&ids(STRANGER, GROUP, None), "ping").await;
    assert_eq!(by_primary, [r#"response "pong""#]);
    let by_supplementary = bed
        .client_as(&ids(STRANGER, STRANGER, Some(GROUP)), "ping")
        .await;
    assert_eq!(by_supplementary, [r#"response "pong""#]);
    assert_eq!(bed.server.refused_peers(), 1);

    // The connection opened first never noticed.
    write_frame(&mut mine, PING).await;
    assert_eq!(read_frame(&mut mine).await.unwrap().operation(), "response");

    // Without a configured group, the socket is private and a would-be member is refused.
    let private = Bed::start("");
    let meta = std::fs::symlink_metadata(&private.sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    private.open_to_all();
    let lines = private
        .client_as(&ids(STRANGER, GROUP, Some(GROUP)), "listen")
        .await;
    assert!(lines[0].contains("permission denied"), "{lines:?}");
    assert_eq!(private.server.refused_peers(), 1);
    MetaClient::connect(&private.sock, WAIT)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
}
