//! The SOCKS5 UDP request header a client puts before each datagram it relays
//! (`edgemesh_module::udp::associate::parse_header`): any bytes are a destination and the
//! payload's offset inside them, or an error, never a panic or an offset past the end.
#![no_main]

use edgemesh_module::udp::associate::parse_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(to) = parse_header(data) {
        assert!(to.data_at <= data.len());
        assert!(
            to.data_at >= 4 + 1 + 2,
            "at least a header's fixed fields and a port"
        );
        assert_eq!(data[2], 0, "fragments are refused");
    }
});
