//! What both listeners (the proxy's and the admin one) decide when they accept a connection.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

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

/// Connections the kernel holds for a listener before it accepts them (capped by the kernel's
/// `net.core.somaxconn`). The usual default, 128, overflows when a burst of clients connects
/// at once: Linux then drops the client's last handshake packet, the client believes it is
/// connected, and its request waits about a second for TCP to retry. nginx uses 511.
pub(crate) const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's `bind`
/// sets, so a restart can bind while old connections linger).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
