//! The Service DNS server's answering path (`edgemesh_module::dns::Dns::answer`): a query
//! packet in, the answer packet out, over UDP and TCP rules. Names outside the cluster
//! would be forwarded; this server has no upstream, so they get SERVFAIL and nothing is
//! sent anywhere.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use edgemesh_module::dns::Dns;
use edgemesh_module::metrics::Metrics;
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

fn dns() -> &'static Dns {
    static DNS: OnceLock<Dns> = OnceLock::new();
    DNS.get_or_init(|| {
        Dns::new(
            edgemesh_fuzz::catalog(),
            edgemesh_fuzz::names(),
            Vec::new(),
            Duration::from_millis(100),
            64,
            Arc::new(Metrics::default()),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let rt = edgemesh_fuzz::runtime();
    for over_tcp in [false, true] {
        let Some(answer) = rt.block_on(dns().answer(data, over_tcp)) else {
            continue;
        };
        // Something was answered, so the query parsed: the answer is a response to it.
        let query = Message::from_vec(data).expect("an answered query parses");
        let response = Message::from_vec(&answer).expect("our answer parses");
        assert_eq!(response.metadata.id, query.metadata.id);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        if !over_tcp {
            let limit = usize::from(query.max_payload().max(512));
            assert!(
                answer.len() <= limit,
                "{} bytes over UDP, limit {limit}",
                answer.len()
            );
        }
    }
});
