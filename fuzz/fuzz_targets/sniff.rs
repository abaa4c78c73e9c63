//! Protocol detection on a connection's first bytes (`edgemesh_module::sniff::classify`,
//! with the TLS ClientHello reader behind it).
#![no_main]

use edgemesh_module::sniff::{Protocol, classify, sni};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = sni(data);
    if let Protocol::Tls { sni } = classify(data) {
        assert_eq!(sni, name);
    }
});
