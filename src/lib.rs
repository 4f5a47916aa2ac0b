//! creatio-proxy: a local sidecar that logs in to Creatio once per identity and forwards plain,
//! unauthenticated HTTP with the session attached.
//!
//! Architecture (see ARCHITECTURE.md for the whole picture):
//! - [`server`] accepts HTTP/1.1 and h2c on `[server] listen` and hands each request to the
//!   stack of the config that is live (`state`); `admin` serves `/healthz`, `/readyz`,
//!   `/metrics` and `/reload` on its own port; `reload` applies new configs.
//! - `stack` is the request path, one tower layer per concern, in request order: request id →
//!   access log and metrics → errors to JSON → admission (client tokens)
//!   → canonical path and route (`canonical`, `routes`) → a client's own login answered
//!   locally → Location rewrite → portal hint → expiry, re-login and replay → the identity's
//!   session (`auth`) → forward → the connection pool (`pool`, `upstream`, `egress`).
//! - `config` reads and validates the TOML file; `diagnosis` and `error` say what went wrong;
//!   `metrics` and `telemetry` are what operators see.
//! - [`emulator`] is a fake Creatio for `creatio-proxy demo` and the tests; it imports nothing
//!   from the proxy. It is not Creatio.
//!
//! The library exposes what the binary ([`cli`]) and the integration tests use: the config,
//! the server and the emulator. Everything else is private to the crate.

/// Entry points for the criterion micro-benchmarks in `benches/`; not an API.
#[doc(hidden)]
pub mod benchmarks;
pub mod cli;
pub mod config;
pub mod emulator;
/// Entry points for the fuzz targets in `fuzz/` and their regression tests; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod server;

mod accept;
mod admin;
mod auth;
mod body;
mod canonical;
mod check;
mod conn;
mod demo;
mod diagnosis;
mod egress;
mod error;
mod metrics;
mod pool;
mod reload;
mod routes;
mod stack;
mod state;
mod store;
mod telemetry;
mod upstream;
mod wire;
