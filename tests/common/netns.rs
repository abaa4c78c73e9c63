//! Network namespaces for the proxy tests: one namespace per test, joined to the host by a
//! veth pair with a default route through it (see DESIGN.md §11: a namespace with only a
//! loopback route gives client sockets no source address). Removed on drop, even when the
//! test fails.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace and its veth link.
pub struct Netns {
    /// The namespace's name.
    pub name: String,
    host_if: String,
    /// The host end's address.
    pub host_ip: String,
    /// The namespace end's address.
    pub ip: String,
}

/// Runs a command, failing the test with its stderr when it fails.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// True when running as root (namespaces and iptables need it; CI runs as root).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Netns {
    /// A new namespace with a veth link to the host and a default route through it.
    pub fn create() -> Netns {
        let (seq, tag) = unique_tag();
        let n = (std::process::id() + seq) % 250 + 1;
        let name = format!("em-{tag}");
        let host_if = format!("emh{tag}");
        let ns_if = format!("emn{tag}");
        let host_ip = format!("10.201.{n}.1");
        let ip = format!("10.201.{n}.2");
        // One left by a run that was killed before its cleanup is removed first.
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        // Made before the namespace, so that a failure from here on still removes it.
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            ip: ip.clone(),
        };
        add_namespace(&name);
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        run(&["ip", "link", "set", &ns_if, "netns", &name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &host_if,
        ]);
        run(&["ip", "link", "set", &host_if, "up"]);
        let exec = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &name];
            full.extend_from_slice(args);
            run(&full);
        };
        exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &ns_if]);
        exec(&["ip", "link", "set", &ns_if, "up"]);
        exec(&["ip", "route", "add", "default", "via", &host_ip]);
        ns
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        command_in(&self.name, program)
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn output(&self, args: &[&str]) -> Output {
        output_in(&self.name, args)
    }

    /// Starts a long-running process inside the namespace.
    pub fn spawn(&self, args: &[&str], log: &std::path::Path) -> Child {
        spawn_in(&self.name, args, log)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_namespace(&self.name);
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A tag no other namespace of this or another live test process has: the pid, a
/// separator and this process's next counter value (`{pid % 10000}{n}` let two runs share
/// a name), with the counter value itself. One number per namespace, taken once: reading
/// the counter again let two tests running at once get the same name.
pub fn unique_tag() -> (u32, String) {
    let seq = NEXT.fetch_add(1, Ordering::SeqCst);
    (seq, format!("{}x{seq}", std::process::id()))
}

/// Creates the namespace `name` with its loopback up and a resolv.conf of its own,
/// removing one of that name left by a run killed before its cleanup first.
pub fn add_namespace(name: &str) {
    remove_namespace(name);
    run(&["ip", "netns", "add", name]);
    // A lookup inside the namespace would hang on the host's unreachable resolver.
    let etc = format!("/etc/netns/{name}");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(format!("{etc}/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    run(&["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]);
}

/// Removes the namespace `name` (and with it every link end inside it) and its /etc/netns
/// files; quiet when there is none.
pub fn remove_namespace(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
}

/// A command that runs inside the namespace `name`.
pub fn command_in(name: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", name, program]);
    cmd
}

/// Runs a command inside the namespace `name` and returns its output.
pub fn output_in(name: &str, args: &[&str]) -> Output {
    command_in(name, args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Starts a long-running process inside the namespace `name`, its output going to `log`.
pub fn spawn_in(name: &str, args: &[&str], log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    command_in(name, args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}
