//! creatio-proxy: a local sidecar that logs in to Creatio once per identity and forwards plain,
//! unauthenticated HTTP with the session attached.
//!
//! Architecture (one request, outside in):
//! 1. [`server`] accepts HTTP/1.1 and h2c on `[server] listen` (hyper-util auto builder).
//! 2. [`proxy::Gateway`] assigns the request id, checks inbound access, refuses dot-segment
//!    paths, picks the route ([`routes`]) and turns failures into JSON ([`error`]).
//! 3. [`proxy::Auth`] (a tower layer) rewrites the path (`/ssp`), strips the client's
//!    credentials and hop-by-hop headers, attaches the identity's Cookie line and BPMCSRF
//!    header ([`auth`]), and on an expired session logs in again once and replays the request.
//! 4. The pooled hyper-util client ([`upstream`]) talks to Creatio over rustls.
//!
//! [`emulator`] is a fake Creatio used by `creatio-proxy demo` and the tests; it is not Creatio.

pub mod auth;
pub mod body;
pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod egress;
pub mod emulator;
pub mod error;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod upstream;
