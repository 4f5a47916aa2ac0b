//! What the layers of the stack learn about a request and hand to each other: typed values in
//! the request's (or the answer's) extensions. Each is written by exactly one layer.

use std::sync::{Arc, OnceLock};

use http::HeaderValue;

use crate::canonical::CanonicalPath;

/// What the outer layers need to know about a request, in one allocation: its id (the
/// client's sane `x-request-id`, or a new one: written by the request-id layer, read by the
/// access log and the error layer) and, once decided, its route (written once by the route
/// layer, read by the access log and the metrics, which sit outside it). Travels as
/// `Arc<RequestInfo>` in the request's extensions.
#[derive(Debug)]
pub(crate) struct RequestInfo {
    /// The request id.
    pub(crate) id: HeaderValue,
    /// The route and identity, once the route layer has decided.
    pub(crate) route: OnceLock<RouteFacts>,
}

impl RequestInfo {
    /// The info of a request with id `id`, not routed yet.
    pub(crate) fn new(id: HeaderValue) -> Arc<Self> {
        Arc::new(RequestInfo {
            id,
            route: OnceLock::new(),
        })
    }
}

/// Which route and identity served the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RouteFacts {
    /// Index of the matched route in the config, `None` for the default.
    pub(crate) route: Option<usize>,
    /// Index of the identity.
    pub(crate) identity: usize,
}

/// The route layer's decision, for the layers below it.
#[derive(Clone, Debug)]
pub(crate) struct Routed {
    /// Route and identity.
    pub(crate) facts: RouteFacts,
    /// Apply the /ssp rule (already applied to the request's URI).
    pub(crate) ssp: bool,
    /// The client's path in canonical form (before the /ssp rule and `creatio.url`'s path).
    pub(crate) path: CanonicalPath,
    /// The client's `Host` (or `:authority`), for pointing a `Location` back at the proxy.
    pub(crate) client_host: Option<HeaderValue>,
}

/// The address of the listener a request came in on (put on every request by the server),
/// for pointing a `Location` back at the proxy when the client's `Host` cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listening(pub(crate) std::net::SocketAddr);

/// Facts about a forwarded request, put on the answer for the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// Creatio's status (of the last attempt).
    pub(crate) upstream_status: u16,
    /// The request met an expired session and was replayed after a new login.
    pub(crate) relogin: bool,
}

/// The session generation a forwarded request was sent with; put on Creatio's answer by the
/// session layer, so the expiry layer can ask for a renewal of exactly that session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentWith {
    /// The session's generation.
    pub(crate) generation: u64,
}
