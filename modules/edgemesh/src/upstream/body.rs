//! A client's request body on its way to an endpoint, noting whether it failed, so that a
//! failed forward is blamed on the side that caused it (a client's fault never reaches the
//! endpoint's breaker).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Incoming;

use crate::error::Error;

/// A client's request body, forwarded frame by frame.
pub struct ClientBody {
    inner: Incoming,
    fault: Arc<AtomicU8>,
}

/// [`ClientBody`]'s fault: none, a malformed body, or a body that broke off.
const NO_FAULT: u8 = 0;
const MALFORMED: u8 = 1;
const BROKE_OFF: u8 = 2;

/// Whether a [`ClientBody`] failed, readable after the body was handed to hyper.
#[derive(Clone)]
pub struct Fault(Arc<AtomicU8>);

impl ClientBody {
    /// Wraps `inner`; the [`Fault`] tells later whether it failed.
    pub fn new(inner: Incoming) -> (Self, Fault) {
        let fault = Arc::new(AtomicU8::new(NO_FAULT));
        (
            ClientBody {
                inner,
                fault: fault.clone(),
            },
            Fault(fault),
        )
    }
}

impl Fault {
    /// The error of a forward that failed: the client's when its body failed, else
    /// `upstream`'s.
    pub fn blame(&self, reason: String, upstream: impl FnOnce(String) -> Error) -> Error {
        match self.0.load(Ordering::Relaxed) {
            MALFORMED => Error::BadRequest(format!("request body: {reason}")),
            BROKE_OFF => Error::ClientAborted(format!("request body: {reason}")),
            _ => upstream(reason),
        }
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            let fault = if e.is_parse() { MALFORMED } else { BROKE_OFF };
            self.fault.store(fault, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
