//! `ProxyBody`: the one body type that flows through the proxy, in both directions.
//!
//! It is an enum rather than a boxed trait object so the common cases (a streamed hyper body,
//! a small buffered body, nothing) cost no allocation. `Prefixed` re-attaches bytes that were
//! read ahead (to fill the replay buffer, or to look for Creatio's login page in an HTML answer)
//! to the rest of the stream, so nothing is ever copied twice or lost.
//!
//! [`PeerBody`] is a body streamed from a peer: a client's request body (hyper's), or
//! Creatio's answer (a [`WireBody`], which hands its connection back to the pool when read to
//! the end, or hyper's after a streamed upload).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::wire::WireBody;

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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
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

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The peer's stream broke (reset, malformed chunk, ...).
    #[error("the body broke off")]
    Peer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A client's body sent nothing for this long (`server.body_read_timeout`).
    #[error("the request body sent nothing for {0:?}")]
    Stalled(Duration),
    /// A client's body passed this many bytes (`max_body`).
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
}

impl BodyError {
    /// The body error behind `e` (say, a Creatio exchange that failed because the request
    /// body it was sending stopped), if that is what it was.
    pub(crate) fn behind<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
        let mut next = Some(e);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<BodyError>() {
                return Some(found);
            }
            next = e.source();
        }
        None
    }
}

/// What a client's request body is held to: a deadline between frames and a size.
#[derive(Debug)]
struct Guard {
    /// `server.body_read_timeout`.
    stall: Duration,
    /// Armed while the body waits for the client; `None` until the first wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    /// `max_body`.
    max: Option<u64>,
    seen: u64,
}

/// A body streamed from a peer: Creatio's answer (which returns its connection to the pool
/// when read to the end) or a client's request body.
#[derive(Debug)]
pub(crate) struct PeerBody {
    inner: Inner,
    /// Counts the data bytes that pass (the metrics' body byte counters).
    counter: Option<Counter>,
    /// A client's body: its limits.
    guard: Option<Box<Guard>>,
}

/// Whose stream it is.
#[derive(Debug)]
enum Inner {
    /// hyper's: a client's request body, or Creatio's answer after a streamed upload.
    Hyper(Incoming),
    /// Creatio's answer, read from the connection in the reader's task.
    Wire(WireBody),
}

impl PeerBody {
    /// A body streamed by hyper.
    pub(crate) fn new(inner: Incoming) -> Self {
        PeerBody {
            inner: Inner::Hyper(inner),
            counter: None,
            guard: None,
        }
    }

    /// Creatio's answer, read by the proxy's own HTTP/1.1 client.
    pub(crate) fn wire(inner: WireBody) -> Self {
        PeerBody {
            inner: Inner::Wire(inner),
            counter: None,
            guard: None,
        }
    }

    /// The same body, adding the size of every data frame to `counter`.
    pub(crate) fn counted(mut self, counter: &Counter) -> Self {
        self.counter = Some(counter.clone());
        self
    }

    /// A client's body: fails with [`BodyError::Stalled`] when the client sends nothing for
    /// `stall`, and with [`BodyError::TooLarge`] past `max` bytes. Nothing is spent until the
    /// body has to wait for the client.
    pub(crate) fn guarded(mut self, stall: Duration, max: Option<u64>) -> Self {
        self.guard = Some(Box::new(Guard {
            stall,
            timer: None,
            armed: false,
            max,
            seen: 0,
        }));
        self
    }

    /// Lowers the size limit of a guarded body (a route's own `max_body`).
    pub(crate) fn limit(&mut self, max: Option<u64>) {
        if let Some(guard) = &mut self.guard {
            guard.max = max;
        }
    }
}

/// A request body that can be held to a route's `max_body` once the route is known.
pub(crate) trait Limit {
    /// Sets the size limit of a client's streamed body (see [`PeerBody::limit`]).
    fn limit(&mut self, max: Option<u64>);
}

impl Limit for ProxyBody {
    fn limit(&mut self, max: Option<u64>) {
        match self {
            ProxyBody::Stream(peer) | ProxyBody::Prefixed(_, peer) => peer.limit(max),
            // Held in memory already: the announced length was checked.
            ProxyBody::Empty | ProxyBody::Full(_) => {}
        }
    }
}

/// The unit tests' bodiless requests.
impl Limit for () {
    fn limit(&mut self, _: Option<u64>) {}
}

impl From<Incoming> for PeerBody {
    fn from(inner: Incoming) -> Self {
        PeerBody::new(inner)
    }
}

impl Body for PeerBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| BodyError::Peer(Box::new(e))))),
            Inner::Wire(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| BodyError::Peer(Box::new(e))))),
        };
        if let Some(guard) = &mut this.guard {
            if let Some(refused) = guard.check(&polled, cx) {
                return Poll::Ready(Some(Err(refused)));
            }
        }
        if let (Some(counter), Poll::Ready(Some(Ok(frame)))) = (&this.counter, &polled) {
            if let Some(data) = frame.data_ref() {
                counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(inner) => inner.is_end_stream(),
            Inner::Wire(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(inner) => inner.size_hint(),
            Inner::Wire(inner) => inner.size_hint(),
        }
    }
}

impl Guard {
    /// The refusal `polled` earns, if any: past the size limit, or still waiting once the
    /// stall deadline has passed.
    fn check(
        &mut self,
        polled: &Poll<Option<Result<Frame<Bytes>, BodyError>>>,
        cx: &mut Context<'_>,
    ) -> Option<BodyError> {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.armed = false;
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                self.seen = self.seen.saturating_add(len);
                match self.max {
                    Some(max) if self.seen > max => Some(BodyError::TooLarge(max)),
                    _ => None,
                }
            }
            Poll::Ready(_) => None,
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + self.stall;
                let timer = match &mut self.timer {
                    Some(timer) => {
                        if !self.armed {
                            timer.as_mut().reset(deadline);
                        }
                        timer
                    }
                    None => self
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                self.armed = true;
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Some(BodyError::Stalled(self.stall)),
                    Poll::Pending => None,
                }
            }
        }
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
pub(crate) async fn read_ahead(mut body: PeerBody, limit: usize) -> Result<ReadAhead, BodyError> {
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
