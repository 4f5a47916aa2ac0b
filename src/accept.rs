//! What both listeners (the proxy's and the admin one) decide when they accept a connection.

use std::net::SocketAddr;

use crate::config::IpBlock;

/// True for accept errors that concern one connection only (the client gave up, a signal):
/// the listener just accepts the next one. Others (out of file descriptors) need a pause.
pub(crate) fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

/// True when `peer` may connect: `server.allowed_clients` is empty or holds its address.
pub(crate) fn is_allowed(allowed: &[IpBlock], peer: SocketAddr) -> bool {
    allowed.is_empty() || allowed.iter().any(|b| b.contains(peer.ip()))
}
