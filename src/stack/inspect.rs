//! Reading the start of an answer without losing it: the expiry and portal-hint layers look
//! for Creatio's login page and its "non-SSP API" refusal in the first bytes of a body.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http::Response;

use crate::body::{read_ahead, ProxyBody, ReadAhead};
use crate::error::ProxyError;

/// Reads the first `limit` bytes of an answer (or all of a shorter one) and returns the answer,
/// whole again, with a copy of those bytes. A body that is not streamed is returned as is,
/// with an empty copy.
pub(crate) async fn peek(
    response: Response<ProxyBody>,
    limit: usize,
    timeout: Duration,
) -> Result<(Response<ProxyBody>, Vec<u8>), ProxyError> {
    let (parts, body) = response.into_parts();
    let body = match body {
        ProxyBody::Stream(peer) => peer,
        ProxyBody::Full(Some(bytes)) => {
            let head = bytes[..bytes.len().min(limit)].to_vec();
            return Ok((Response::from_parts(parts, ProxyBody::full(bytes)), head));
        }
        other => return Ok((Response::from_parts(parts, other), Vec::new())),
    };
    let ahead = tokio::time::timeout(timeout, read_ahead(body, limit.saturating_sub(1)))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(timeout))?
        .map_err(|e| ProxyError::AnswerBroken(std::sync::Arc::new(e)))?;
    let (head, body) = match ahead {
        ReadAhead::Complete(bytes) => (bytes.to_vec(), ProxyBody::full(bytes)),
        ReadAhead::Partial(chunks, rest) => {
            (head_of(&chunks, limit), ProxyBody::Prefixed(chunks, rest))
        }
    };
    Ok((Response::from_parts(parts, body), head))
}

fn head_of(chunks: &VecDeque<Bytes>, n: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(n);
    for c in chunks {
        let take = (n - head.len()).min(c.len());
        head.extend_from_slice(&c[..take]);
        if head.len() == n {
            break;
        }
    }
    head
}
