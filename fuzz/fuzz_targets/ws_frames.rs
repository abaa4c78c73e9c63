//! The cloud link's WebSocket framing (`proto::ws::FrameReader`) on whatever a peer sends,
//! as either end, in reads of any size: it never panics, never takes a message over its
//! limit, and every message it takes is written back by `FrameWriter` and read again as
//! the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proto::ws::{FrameReader, FrameWriter, Role, WsMessage};
use tokio::io::AsyncRead;

/// Largest message taken: small, so oversized frames are reached by short inputs.
const MAX: usize = 4096;

/// Hands out at most `step` bytes per read, so frames arrive in pieces.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        std::task::Poll::Ready(Ok(()))
    }
}

fn size(msg: &WsMessage) -> usize {
    match msg {
        WsMessage::Text(b) | WsMessage::Binary(b) | WsMessage::Ping(b) | WsMessage::Pong(b) => {
            b.len()
        }
        WsMessage::Close(_) => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let role = if control & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let step = usize::from(control >> 1) + 1;
    edgemesh_fuzz::runtime().block_on(async {
        let mut io = Trickle { data: wire, step };
        let mut reader = FrameReader::new(role, 64, MAX, BytesMut::new());
        let mut taken = Vec::new();
        while let Ok(Some(msg)) = reader.next(&mut io).await {
            assert!(size(&msg) <= MAX, "a message over the limit was taken");
            taken.push(msg);
        }
        // Written back by the other end, read again by this one's peer role.
        let (writer_role, reader_role) = match role {
            Role::Server => (Role::Server, Role::Client),
            Role::Client => (Role::Client, Role::Server),
        };
        let mut writer = FrameWriter::new(writer_role);
        for msg in &taken {
            writer.push(msg.clone());
        }
        let mut rewritten = Vec::new();
        writer
            .flush(&mut rewritten)
            .await
            .expect("a Vec takes it all");
        let mut again = FrameReader::new(reader_role, 64, MAX, BytesMut::new());
        let mut io = Trickle {
            data: &rewritten,
            step,
        };
        for msg in &taken {
            let read = again.next(&mut io).await.expect("our own frames read back");
            assert_eq!(read.as_ref(), Some(msg));
        }
        assert_eq!(again.next(&mut io).await.expect("clean end"), None);
    });
});
