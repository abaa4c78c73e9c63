//! How a failure is answered over HTTP: its status (by whose fault it is), a plain-text
//! reason, and `Retry-After` for a QPS refusal; as a hyper response or as raw bytes for the
//! paths that write to the socket themselves.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::error::Error;

/// A response body: the upstream's, or ours.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Plain-text answer with `status`.
pub fn text(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    let mut body = reason.into();
    body.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The plain-text answer to a failure.
pub fn refusal(error: &Error) -> Response<Body> {
    let mut resp = text(refusal_status(error), error.to_string());
    if let Some(secs) = retry_after(error) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The status a failure is answered with.
pub fn refusal_status(error: &Error) -> StatusCode {
    match error {
        Error::Limited { .. }
        | Error::Tunnel {
            code: Some(proto::stream::ResetCode::Limited),
            ..
        } => StatusCode::TOO_MANY_REQUESTS,
        Error::Connect { .. } | Error::Upstream { .. } => StatusCode::BAD_GATEWAY,
        Error::ConnectTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::Protocol(_) | Error::BadRequest(_) | Error::ClientAborted(_) => {
            StatusCode::BAD_REQUEST
        }
        Error::HeadTooLarge { .. } | Error::TooManyHeaders { .. } => {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        }
        Error::HeadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        Error::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        Error::Expectation(_) => StatusCode::EXPECTATION_FAILED,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `Retry-After` seconds for a QPS refusal: whole seconds, rounded up, at least 1 (a
/// client told 0 would come straight back).
fn retry_after(error: &Error) -> Option<u64> {
    match error {
        Error::Limited { retry_after, .. } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            Some(secs.max(1))
        }
        // The far node's limiter does not say when; a second is its refill at the least.
        Error::Tunnel {
            code: Some(proto::stream::ResetCode::Limited),
            ..
        } => Some(1),
        _ => None,
    }
}

/// The same answer as raw HTTP/1.1 bytes, for paths that write to the socket themselves;
/// `close` adds `connection: close`.
pub fn refusal_bytes(error: &Error, close: bool) -> Vec<u8> {
    let status = refusal_status(error);
    let body = format!("{error}\n");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(secs) = retry_after(error) {
        out.push_str(&format!("retry-after: {secs}\r\n"));
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}
