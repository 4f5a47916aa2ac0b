//! `ProxyBody`: the one body type that flows through the proxy, in both directions.
//!
//! It is an enum rather than a boxed trait object so the common cases (a streamed hyper body,
//! a small buffered body, nothing) cost no allocation. `Prefixed` re-attaches bytes that were
//! read ahead (to fill the replay buffer, or to look for Creatio's login page in an HTML answer)
//! to the rest of the stream, so nothing is ever copied twice or lost.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::pool::PeerBody;

/// A request or response body.
#[derive(Debug)]
pub enum ProxyBody {
    /// No body.
    Empty,
    /// A complete body held in memory (taken on first poll).
    Full(Option<Bytes>),
    /// A body streamed from a peer.
    Stream(PeerBody),
    /// Bytes read ahead, then the rest of the stream.
    Prefixed(VecDeque<Bytes>, PeerBody),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(bytes))
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream(incoming) => Pin::new(incoming).poll_frame(cx),
            ProxyBody::Prefixed(prefix, incoming) => match prefix.pop_front() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(incoming).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Stream(i) => i.is_end_stream(),
            ProxyBody::Prefixed(p, i) => p.is_empty() && i.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Stream(i) => i.size_hint(),
            ProxyBody::Prefixed(p, i) => {
                let ahead: u64 = p.iter().map(|b| b.len() as u64).sum();
                let inner = i.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + ahead);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + ahead);
                }
                hint
            }
        }
    }
}

/// What reading ahead found.
pub enum ReadAhead {
    /// The body ended within the limit: here it is, whole.
    Complete(Bytes),
    /// The body is longer than the limit: the bytes read so far and the rest of the stream.
    Partial(VecDeque<Bytes>, PeerBody),
}

/// Reads `body` until it ends or more than `limit` bytes have arrived. Trailers are dropped
/// (Creatio uses none).
pub async fn read_ahead(mut body: PeerBody, limit: usize) -> Result<ReadAhead, hyper::Error> {
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0usize;
    loop {
        if total > limit {
            return Ok(ReadAhead::Partial(chunks, body));
        }
        match body.frame().await {
            None => break,
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    if !data.is_empty() {
                        total += data.len();
                        chunks.push_back(data);
                    }
                }
            }
        }
    }
    Ok(ReadAhead::Complete(concat(chunks, total)))
}

/// Joins chunks without copying when there is only one.
pub fn concat(mut chunks: VecDeque<Bytes>, total: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut buf = BytesMut::with_capacity(total);
            for c in chunks {
                buf.extend_from_slice(&c);
            }
            buf.freeze()
        }
    }
}
