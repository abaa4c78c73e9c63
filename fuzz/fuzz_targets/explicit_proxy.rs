//! The explicit proxy's first exchange (`edgemesh_module::explicit`): an HTTP CONNECT or
//! SOCKS5 greeting and request, read from memory. A tunnel is only ever opened to a
//! Service address the catalog holds (no open proxy).
#![no_main]

use std::sync::OnceLock;

use edgemesh_module::explicit::fuzzing::open;
use edgemesh_module::shared::Shared;
use libfuzzer_sys::fuzz_target;

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(edgemesh_fuzz::shared)
}

fuzz_target!(|data: &[u8]| {
    let shared = shared();
    let (opened, written) = edgemesh_fuzz::runtime().block_on(open(data, shared));
    if let Ok(Some((vip, early))) = opened {
        assert!(
            shared.catalog.load().lookup(vip).is_some(),
            "{vip} is a Service"
        );
        assert!(early.len() < data.len());
        if data[0] == 5 {
            assert!(
                written.ends_with(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
                "SOCKS5 success"
            );
        } else {
            assert!(written.starts_with(b"HTTP/1.1 200 "), "CONNECT success");
        }
    }
});
