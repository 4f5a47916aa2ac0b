//! Accept loop: one task per connection, with HTTP/1.1 (keep-alive) and h2c chosen per
//! connection by hyper-util's `auto` builder. The app and the Identity Service each run one,
//! with their own handler, and share one shutdown signal.
//!
//! On shutdown the loop stops accepting and drops the listener. Every connection is then shut
//! down gracefully: idle keep-alive connections close at once, and busy ones close after their
//! current request.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::handlers::Body;
use super::state::Shared;

/// Serves every request accepted on `listener` with `handler` until shutdown.
pub(super) async fn accept_loop<H, F>(listener: TcpListener, shared: Arc<Shared>, handler: H)
where
    H: Fn(Arc<Shared>, Request<Incoming>) -> F + Copy + Send + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut shutdown = shared.subscribe_shutdown();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut shutdown) => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let connection =
                    serve_connection(stream, shared.clone(), shutdown.clone(), handler);
                tokio::spawn(connection);
            }
            Err(error) => {
                // Errors such as EMFILE clear up by themselves. A short pause keeps the loop
                // from spinning on them in the meantime.
                tracing::debug!(%error, "emulator accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tracing::debug!("emulator stopped accepting");
}

async fn serve_connection<H, F>(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Arc<Shared>, Request<Incoming>) -> F + Copy + Send + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    // Small JSON answers should not sit behind Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| handler(shared.clone(), request));
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // A client hanging up mid-request is normal in tests. It is worth no more than debug.
        tracing::debug!(%error, "emulator connection ended with an error");
    }
}

/// Resolves once shutdown is requested, or if the sender is gone. The `watch::Ref` guard is
/// dropped here, so it is never held across another `.await`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
