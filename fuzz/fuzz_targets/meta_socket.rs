//! The metamanager socket protocol as both ends read it: length-delimited frames
//! (`proto::meta_socket::codec`) fed in pieces, each frame a Message in JSON. The server
//! reads a request's resource (`metamanager::server::fuzzing::target`); the client reads
//! a list answer and the objects of watch events, and edgemesh builds its catalog from them.
#![no_main]

use std::collections::BTreeMap;

use bytes::BytesMut;
use edgemesh_module::catalog::{Catalog, Defaults, Kept};
use edgemesh_module::objects::{Endpoints, Service};
use libfuzzer_sys::fuzz_target;
use proto::{Message, meta_socket};
use serde_json::Value;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // A small limit, so oversized frames are reached by short inputs too.
    let mut codec = meta_socket::codec(4096);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let step = data.len() % 13 + 1;
    'read: for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                // The server closes the connection on a bad frame.
                Err(_) => break 'read,
            }
        }
    }

    let mut services = BTreeMap::new();
    let mut endpoints = BTreeMap::new();
    for frame in frames {
        let Ok(msg) = Message::from_json(&frame) else {
            continue;
        };
        let _ = metamanager::server::fuzzing::target(msg.resource());
        let objects: Vec<Value> = match msg.content.decode::<Vec<Value>>() {
            Ok(list) => list,
            Err(_) => match msg.content.decode::<Value>() {
                Ok(one) => vec![one],
                Err(_) => continue,
            },
        };
        for object in &objects {
            if let Some(svc) = Service::parse(object) {
                services.insert(format!("{}/service/{}", svc.namespace, svc.name), svc);
            }
            // The follower keys objects by the watch event's resource; the catalog finds
            // Endpoints by `<ns>/endpoints/<name>`.
            let meta = &object["metadata"];
            if let (Some(ns), Some(name)) = (meta["namespace"].as_str(), meta["name"].as_str()) {
                endpoints.insert(format!("{ns}/endpoints/{name}"), Endpoints::parse(object));
            }
        }
    }
    let kept = Kept::default();
    let catalog = Catalog::build(&services, &endpoints, &Defaults::default(), &kept);
    for vip in catalog.vips() {
        assert!(catalog.lookup(vip).is_some());
    }
});
