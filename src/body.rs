//! `ProxyBody`: the one body type that flows through the proxy, in both directions.
//!
//! It is an enum rather than a boxed trait object so the common cases (a streamed hyper body,
//! a small buffered body, nothing) cost no allocation. `Prefixed` re-attaches bytes that were
//! read ahead (to fill the replay buffer, or to look for Creatio's login page in an HTML answer)
//! to the rest of the stream, so nothing is ever copied twice or lost.
//!
//! [`PeerBody`] is a body streamed from a peer: a client's request body, or Creatio's answer,
//! which hands its connection back to the pool when read to the end. The pool is reached
//! through the [`GiveBack`] trait, so this module does not depend on the pool (the pool sends
//! `ProxyBody`s, and a `ProxyBody` may hold a `PeerBody`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use prometheus_client::metrics::counter::Counter;

/// A request or response body.
#[derive(Debug)]
pub(crate) enum ProxyBody {
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
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
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

/// Where a connection goes once the answer it carried has been read to the end.
pub(crate) trait GiveBack: Send + Sync {
    /// Takes the connection back (or closes it).
    fn give_back(&self, sender: SendRequest<ProxyBody>);
}

/// A connection to hand back, and where to.
pub(crate) struct Release {
    pool: Arc<dyn GiveBack>,
    sender: SendRequest<ProxyBody>,
}

impl Release {
    /// Hands `sender` to `pool` when the body it carries ends.
    pub(crate) fn new(pool: Arc<dyn GiveBack>, sender: SendRequest<ProxyBody>) -> Self {
        Release { pool, sender }
    }

    fn done(self) {
        self.pool.give_back(self.sender);
    }
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Release")
    }
}

/// A body streamed from a peer: Creatio's answer (which returns its connection to the pool
/// when read to the end) or a client's request body.
#[derive(Debug)]
pub(crate) struct PeerBody {
    inner: Incoming,
    release: Option<Release>,
    /// Counts the data bytes that pass (the metrics' body byte counters).
    counter: Option<Counter>,
}

impl PeerBody {
    /// A body that returns no connection anywhere.
    pub(crate) fn new(inner: Incoming) -> Self {
        PeerBody {
            inner,
            release: None,
            counter: None,
        }
    }

    /// A body that hands its connection back through `release` when it ends.
    pub(crate) fn releasing(inner: Incoming, release: Release) -> Self {
        PeerBody {
            inner,
            release: Some(release),
            counter: None,
        }
    }

    /// The same body, adding the size of every data frame to `counter`.
    pub(crate) fn counted(mut self, counter: &Counter) -> Self {
        self.counter = Some(counter.clone());
        self
    }
}

impl From<Incoming> for PeerBody {
    fn from(inner: Incoming) -> Self {
        PeerBody::new(inner)
    }
}

impl Body for PeerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(r) = this.release.take() {
                    r.done();
                }
            }
            Poll::Ready(Some(Err(_))) => this.release = None,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                if let Some(r) = this.release.take() {
                    r.done();
                }
            }
            _ => {}
        }
        if let (Some(counter), Poll::Ready(Some(Ok(frame)))) = (&this.counter, &polled) {
            if let Some(data) = frame.data_ref() {
                counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What reading ahead found.
pub(crate) enum ReadAhead {
    /// The body ended within the limit: here it is, whole.
    Complete(Bytes),
    /// The body is longer than the limit: the bytes read so far and the rest of the stream.
    Partial(VecDeque<Bytes>, PeerBody),
}

/// Reads `body` until it ends or more than `limit` bytes have arrived. Trailers are dropped
/// (Creatio uses none).
pub(crate) async fn read_ahead(
    mut body: PeerBody,
    limit: usize,
) -> Result<ReadAhead, hyper::Error> {
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
pub(crate) fn concat(mut chunks: VecDeque<Bytes>, total: usize) -> Bytes {
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
