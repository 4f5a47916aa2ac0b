//! The HTTP/1.1 exchange with Creatio for requests whose body is in memory (no body, or a
//! buffered one): the request head is written from the request as the stack left it, and the
//! answer head is parsed (`httparse`) in the request's own task; the answer's body streams
//! from the connection through [`WireBody`], which hands the connection back to the pool when
//! it has read the body to its end.
//!
//! hyper's client does the same work through a connection task, a channel and a oneshot per
//! request; doing it in the request's task is most of what makes the proxy cheaper per
//! request than a bare hyper forwarder (docs/performance.md). A request whose body streams
//! from the client still goes through hyper's client ([`crate::pool`]), which writes the body
//! while it reads an early answer.
//!
//! Rules (RFC 9112):
//! 1. The request goes out as HTTP/1.1, `Host` first, then the request's headers in order
//!    without any `Content-Length` or `Transfer-Encoding` of its own: the body's length is
//!    written from the body (`Content-Length: 0` for an empty POST, PUT or PATCH, which IIS
//!    otherwise answers 411).
//! 2. Interim answers (1xx) are read and dropped; a `101 Switching Protocols` is refused (the
//!    proxy never asks for an upgrade).
//! 3. The answer to HEAD, and a 204 or 304, has no body whatever its headers say.
//! 4. `Transfer-Encoding` wins over `Content-Length`; the `Content-Length` is removed and the
//!    connection is not reused. A final coding other than `chunked` means the body ends when
//!    Creatio closes the connection.
//! 5. `Content-Length` values that disagree (or are not a number) are refused: the proxy
//!    cannot know where the answer ends. Repeats of one value are folded to one.
//! 6. With neither, the body ends when Creatio closes the connection.
//! 7. The connection is reused only after an HTTP/1.1 answer without `Connection: close`
//!    whose body was read to its end with nothing after it.
//!
//! A request is sent again on another connection only when the connection it was first
//! written to accepted not one byte of it ([`ExchangeError::unsent`]). Over TLS, a write that
//! fails may have put some records on the wire, but never the whole request, so Creatio
//! cannot have run it.
//!
//! A body larger than [`COALESCE`] is written while the connection is watched for an answer:
//! when Creatio answers (say, 401 or 413) and stops reading before the body is all sent, the
//! writing stops, the answer is read, and the connection is not reused.

mod chunked;

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use chunked::{Chunked, Step};

/// The transport to Creatio: TCP, or TLS over TCP, possibly through an egress tunnel.
pub(crate) type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// Largest answer head read (status line and headers).
const MAX_HEAD: usize = 128 * 1024;

/// Most header lines in an answer head.
const MAX_HEADERS: usize = 128;

/// Buffered bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;

/// Spare room the read buffer keeps for the next read of a head: a Creatio answer head with
/// its session cookies is 1 to 2 KiB.
const HEAD_READ: usize = 4 * 1024;

/// Largest read of a body.
const BODY_READ: usize = 64 * 1024;

/// One connection to Creatio: its transport and what was read from it but not yet used.
pub(crate) struct Conn {
    io: Io,
    buf: BytesMut,
}

impl Conn {
    /// A new connection over `io`; boxed, because a TLS connection is over a kilobyte and the
    /// answer's body, which holds it, moves through every layer of the stack.
    pub(crate) fn new(io: Io) -> Box<Self> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
        })
    }

    /// Whether the connection can carry another request: Creatio has not closed it and sent
    /// nothing unasked. Costs one non-blocking read.
    pub(crate) fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut probe = [0u8; 1];
        let mut read = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut read),
            Poll::Pending
        )
    }

    /// The transport, for hyper's client (a streamed upload); `None` if bytes were read ahead
    /// that hyper would not see.
    pub(crate) fn into_io(self: Box<Self>) -> Option<MaybeHttpsStream<TokioIo<TcpStream>>> {
        self.buf.is_empty().then(|| self.io.into_inner())
    }
}

/// Where a connection goes once the answer it carried has been read to the end.
pub(crate) trait GiveBack: Send + Sync {
    /// Takes the connection back (or closes it).
    fn give_back(&self, conn: Box<Conn>);
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The transport failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Creatio closed the connection before its answer (or the answer's body) was complete.
    #[error("Creatio closed the connection before the answer was complete")]
    Closed,
    /// The answer head is not HTTP/1.x.
    #[error("malformed answer head: {0}")]
    Head(#[from] httparse::Error),
    /// The answer head is larger than the proxy reads.
    #[error("the answer head is larger than {} KiB", MAX_HEAD / 1024)]
    HeadTooLarge,
    /// A header name or value that HTTP does not allow.
    #[error("malformed header in the answer")]
    Header,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    Upgrade,
    /// `Content-Length` values that disagree or are not numbers.
    #[error("invalid Content-Length in the answer")]
    ContentLength,
    /// A chunked body that does not follow RFC 9112 §7.1.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

/// A failed exchange, and whether the request can go out again on another connection.
#[derive(Debug)]
pub(crate) struct ExchangeError {
    /// Not one byte of the request was accepted by the connection.
    pub(crate) unsent: bool,
    /// What went wrong.
    pub(crate) error: WireError,
}

/// How an answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until Creatio closes the connection.
    Close,
}

/// The framing of an answer with `status` to a request with `method`, and whether the
/// connection may carry another request after it (rules 3 to 7). Removes a `Content-Length`
/// that `Transfer-Encoding` overrides and folds repeats of one length into one header.
pub(crate) fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
) -> Result<(Framing, bool), WireError> {
    let mut reuse = version == Version::HTTP_11 && !has_token(headers, header::CONNECTION, "close");
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, reuse));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            reuse = false;
        }
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|c| c.trim_ascii())
            .rfind(|c| !c.is_empty());
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => (Framing::Chunked, reuse),
            _ => (Framing::Close, false),
        });
    }
    let mut length: Option<u64> = None;
    let mut values = 0;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            values += 1;
            let n = parse_length(part.trim_ascii()).ok_or(WireError::ContentLength)?;
            if length.is_some_and(|seen| seen != n) {
                return Err(WireError::ContentLength);
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) => {
            if values > 1 {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok((
                if n == 0 {
                    Framing::Empty
                } else {
                    Framing::Length(n)
                },
                reuse,
            ))
        }
        None => Ok((Framing::Close, false)),
    }
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The request head (rule 1) and the body to write after it, if it is not in the head.
pub(crate) fn encode<B>(
    req: &Request<B>,
    host: &HeaderValue,
    body: Option<&Bytes>,
) -> (BytesMut, Option<Bytes>) {
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.extend_from_slice(b" ");
    let uri = req.uri();
    if uri.scheme().is_some() {
        // Plain HTTP through an egress proxy: the absolute form.
        out.extend_from_slice(uri.to_string().as_bytes());
    } else {
        out.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut said_length = false;
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH {
            said_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING || name == header::HOST {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let len = body.map_or(0, Bytes::len);
    let method = req.method();
    if len > 0
        || said_length
        || *method == Method::POST
        || *method == Method::PUT
        || *method == Method::PATCH
    {
        let _ = write!(out, "content-length: {len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    match body {
        Some(b) if b.len() <= COALESCE => {
            out.extend_from_slice(b);
            (out, None)
        }
        other => (out, other.filter(|b| !b.is_empty()).cloned()),
    }
}

/// Writes `head` (and `body`) on `conn` and reads the answer head; the answer's body streams
/// from the connection, which goes back to `pool` once it is read.
pub(crate) async fn exchange(
    mut conn: Box<Conn>,
    head: &[u8],
    body: Option<&Bytes>,
    method: &Method,
    pool: &Arc<dyn GiveBack>,
) -> Result<Response<WireBody>, ExchangeError> {
    // Whether the whole request went out: Creatio may answer (a 401, a 413) before a large
    // body is written, and stop reading it.
    let complete = match write(&mut conn, head, body).await {
        Ok(complete) => complete,
        Err((written, error)) => {
            return Err(ExchangeError {
                unsent: written == 0,
                error,
            })
        }
    };
    let fail = |error| ExchangeError {
        unsent: false,
        error,
    };
    let mut parts = loop {
        if let Some(parts) = parse_head(&mut conn.buf).map_err(fail)? {
            if parts.status.is_informational() {
                if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(fail(WireError::Upgrade));
                }
                continue;
            }
            break parts;
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(fail(WireError::HeadTooLarge));
        }
        if conn.buf.capacity() - conn.buf.len() < HEAD_READ / 2 {
            conn.buf.reserve(HEAD_READ);
        }
        let read = std::future::poll_fn(|cx| {
            tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
        });
        match read.await {
            Ok(0) => return Err(fail(WireError::Closed)),
            Ok(_) => {}
            Err(e) => return Err(fail(WireError::Io(e))),
        }
    };
    let (framing, reuse) =
        framing(method, parts.status, parts.version, &mut parts.headers).map_err(fail)?;
    let body = WireBody::new(conn, framing, reuse && complete, pool.clone());
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.version_mut() = parts.version;
    *response.headers_mut() = parts.headers;
    Ok(response)
}

/// Writes the head, then the body while watching for an early answer: `Ok(false)` when
/// Creatio answered (or closed) before the body was all written, which stops the writing;
/// the answer is then in the connection's buffer. On failure, how many bytes the connection
/// accepted.
async fn write(
    conn: &mut Conn,
    head: &[u8],
    body: Option<&Bytes>,
) -> Result<bool, (usize, WireError)> {
    let mut written = 0;
    let mut rest = head;
    while !rest.is_empty() {
        match conn.io.write(rest).await {
            Ok(0) => return Err((written, WireError::Closed)),
            Ok(n) => {
                written += n;
                rest = &rest[n..];
            }
            Err(e) => return Err((written, WireError::Io(e))),
        }
    }
    let mut rest = body.map_or(&[][..], |b| &b[..]);
    let complete = std::future::poll_fn(|cx| loop {
        if rest.is_empty() {
            return Poll::Ready(Ok(true));
        }
        match Pin::new(&mut conn.io).poll_write(cx, rest) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(WireError::Closed)),
            Poll::Ready(Ok(n)) => {
                written += n;
                rest = &rest[n..];
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(WireError::Io(e))),
            // Creatio is not reading: has it answered?
            Poll::Pending => {
                if conn.buf.capacity() - conn.buf.len() < HEAD_READ / 2 {
                    conn.buf.reserve(HEAD_READ);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(n)) if n > 0 => {
                        // An interim answer (100 Continue) does not stop the upload.
                        while skip_interim(&mut conn.buf) {}
                        if !conn.buf.is_empty() {
                            return Poll::Ready(Ok(false));
                        }
                    }
                    // The end of the connection, or an error: read what came.
                    Poll::Ready(_) => return Poll::Ready(Ok(false)),
                }
            }
        }
    })
    .await
    .map_err(|e| (written, e))?;
    if complete {
        conn.io
            .flush()
            .await
            .map_err(|e| (written, WireError::Io(e)))?;
    }
    Ok(complete)
}

/// Takes a complete interim answer head (1xx other than 101) off the front of `buf`; false
/// when there is none.
fn skip_interim(buf: &mut BytesMut) -> bool {
    let mut slots = [NO_HEADER; MAX_HEADERS];
    let Ok(Some((len, parsed))) = parse(buf, &mut slots) else {
        return false;
    };
    let interim = parsed
        .code
        .is_some_and(|c| (100..200).contains(&c) && c != 101);
    if interim {
        let _ = buf.split_to(len);
    }
    interim
}

/// An unused header slot: the slots are left uninitialised, since zeroing 128 of them cost
/// more than parsing a small head.
const NO_HEADER: std::mem::MaybeUninit<httparse::Header<'static>> = std::mem::MaybeUninit::uninit();

/// Parses the answer head at the front of `buf` into `slots`: its length and the parse, or
/// `None` while it is incomplete.
fn parse<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(usize, httparse::Response<'h, 'b>)>, httparse::Error> {
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    Ok(
        match config.parse_response_with_uninit_headers(&mut parsed, buf, slots)? {
            httparse::Status::Complete(len) => Some((len, parsed)),
            httparse::Status::Partial => None,
        },
    )
}

/// An answer head taken off the buffer.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// Parses an answer head at the start of `buf`; `None` until it is complete. The header
/// values share the buffer's memory.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, WireError> {
    let mut slots = [NO_HEADER; MAX_HEADERS];
    let Some((len, parsed)) = parse(buf, &mut slots)? else {
        return Ok(None);
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(WireError::Header)?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each header's name and value sit in the head.
    let base = buf.as_ptr() as usize;
    let at = |part: &[u8]| ((part.as_ptr() as usize).wrapping_sub(base), part.len());
    let spans: Vec<_> = parsed
        .headers
        .iter()
        .map(|h| (at(h.name.as_bytes()), at(h.value)))
        .collect();
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for ((name_at, name_len), (value_at, value_len)) in spans {
        let name = head
            .get(name_at..name_at.saturating_add(name_len))
            .and_then(|n| HeaderName::from_bytes(n).ok())
            .ok_or(WireError::Header)?;
        let value = head
            .get(value_at..value_at.saturating_add(value_len))
            .map(|_| head.slice(value_at..value_at + value_len))
            .and_then(|v| HeaderValue::from_maybe_shared(v).ok())
            .ok_or(WireError::Header)?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// Where the body stands.
#[derive(Debug)]
enum State {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked.
    Chunked(Chunked),
    /// Until the connection closes.
    Close,
    /// Read to its end.
    Done,
}

/// Creatio's answer body, read from its connection in the reader's task.
pub(crate) struct WireBody {
    conn: Option<Box<Conn>>,
    state: State,
    reuse: bool,
    pool: Arc<dyn GiveBack>,
}

impl std::fmt::Debug for WireBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireBody")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl WireBody {
    fn new(conn: Box<Conn>, framing: Framing, reuse: bool, pool: Arc<dyn GiveBack>) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::default()),
            Framing::Close => State::Close,
        };
        let mut body = WireBody {
            conn: Some(conn),
            state,
            reuse,
            pool,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The body has ended: the connection goes back to the pool if it can carry more.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(mut conn) = self.conn.take() {
            if self.reuse && conn.buf.is_empty() {
                // A large body grew the buffer; an idle connection keeps none of that.
                if conn.buf.capacity() > 2 * HEAD_READ {
                    conn.buf = BytesMut::new();
                }
                self.pool.give_back(conn);
            }
        }
    }

    fn fail(&mut self, e: WireError) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(rest) if !buf.is_empty() => {
                    let n = buf.len().min(usize::try_from(*rest).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    *rest -= n as u64;
                    if *rest == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Close if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(decoder) if !buf.is_empty() => match decoder.step(buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(e) => return this.fail(WireError::Chunked(e)),
                },
                _ => {}
            }
            let want = match &this.state {
                State::Length(rest) => usize::try_from(*rest).unwrap_or(BODY_READ).min(BODY_READ),
                _ => BODY_READ,
            };
            if buf.capacity() - buf.len() < want.min(HEAD_READ) {
                buf.reserve(want.max(HEAD_READ));
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if matches!(this.state, State::Close) {
                        this.reuse = false;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    return this.fail(WireError::Closed);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(WireError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
