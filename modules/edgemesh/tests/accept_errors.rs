//! A worker whose accept fails (out of descriptors) keeps accepting once descriptors are
//! free again. Its own test binary: it takes every descriptor from the whole process.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgemesh_module::spread::Spread;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Keeps every warning, so the test can wait for the failed accept.
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

fn warned(what: &str) -> bool {
    WARNINGS.0.lock().unwrap().iter().any(|w| w.contains(what))
}

#[test]
fn accepting_resumes_after_running_out_of_descriptors() {
    log::set_logger(&WARNINGS).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    // The client's socket exists before the limit drops; connecting needs no descriptor.
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let stop = CancellationToken::new();
    let seat = Spread::seats(1).pop().unwrap();
    let worker = {
        let stop = stop.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                seat.serve(Some(listener), "test", stop, |mut stream, _| async move {
                    stream.write_all(b"ok").await?;
                    Ok(())
                })
                .await
            })
        })
    };

    let saved = getrlimit(Resource::Nofile);
    let none = Rlimit {
        current: Some(0),
        maximum: saved.maximum,
    };
    setrlimit(Resource::Nofile, none).unwrap();
    let connected = client.connect(&addr.into());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !warned("accept failed") && Instant::now() < deadline {
        std::thread::yield_now();
    }
    setrlimit(Resource::Nofile, saved).unwrap();
    connected.unwrap();
    assert!(warned("accept failed"), "the accept never failed");

    let mut client: std::net::TcpStream = client.into();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 2];
    client
        .read_exact(&mut answer)
        .expect("the pending connection is accepted once descriptors are free");
    assert_eq!(&answer, b"ok");
    stop.cancel();
    worker.join().unwrap();
}
