//! The request path: one tower stack, built once per config (at start and at every reload),
//! read here top to bottom in request order. Each layer is its own module, with its rules in
//! its module docs and its decision in a plain function its tests drive.
//!
//! | # | layer | on the way in | on the way out |
//! |---|---|---|---|
//! | 1 | [`request_id`] | sane client id or a new one | `x-request-id` on every answer |
//! | 2 | [`access_log`] | start the clock | access line, request metrics, error line |
//! | 3 | [`errors`] | | every `ProxyError` becomes its JSON answer |
//! | 4 | [`limits`] | method allow-list, target and head sizes, `Expect` | |
//! | 5 | [`admission`] | client tokens (addresses are checked at accept) | |
//! | 6 | [`route`] | canonical path, route, identity, Creatio's URI, `max_body` | |
//! | 7 | [`client_login`] | a client's own Login/Logout answered here | |
//! | 8 | [`location`] | | a `Location` into Creatio points at the proxy |
//! | 9 | [`portal_hint`] | | advice on a portal user's 403 |
//! | 10 | [`recover`] | body kept for a replay | expired? re-login once, replay once |
//! | 11 | [`session`] | client credentials out, session in | `Set-Cookie` into the jar, never out |
//! | 12 | [`forward`] | hop-by-hop out, HTTP/1.1 | timeout, latency, byte counts |
//! |    | the pool ([`crate::pool`]) | a kept-alive connection to Creatio | |
//!
//! Three rules keep it simple:
//! 1. Routes decide on the canonical path only; the forwarded target is that same path.
//! 2. Only the session layer puts credentials on a request or writes an identity's jar.
//! 3. Layers pass facts down in the request's extensions and up in the answer's
//!    ([`request`]); errors travel as `ProxyError` until the error layer answers them.
//!
//! tower-http's layers, considered one by one: its request id keeps any id a client sends
//! (ours refuses insane ones, see [`request_id`]); its timeout answers 408, where a slow
//! Creatio is a 504 ([`forward`]); its sensitive-headers layer marks headers sensitive so a
//! trace layer does not print them, but nothing here prints request headers, the client's
//! credentials are removed by the session layer, and the ones the session attaches are made
//! sensitive when the session is built; it cost about 780 instructions a request
//! (`bench/instructions.sh`), so it is not used. Its body-limit layer answers 413 as plain
//! text and cannot tell a stalled body from a large one: the client's body carries its own
//! limits instead ([`crate::body::PeerBody::guarded`], armed in [`crate::server`] and
//! [`route`]), which fail as 408 or 413 JSON wherever the body is read.

pub(crate) mod access_log;
pub(crate) mod admission;
pub(crate) mod client_login;
pub(crate) mod errors;
pub(crate) mod forward;
mod future;
mod inspect;
pub(crate) mod limits;
pub(crate) mod location;
pub(crate) mod portal_hint;
pub(crate) mod recover;
pub(crate) mod request;
pub(crate) mod request_id;
pub(crate) mod route;
pub(crate) mod session;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::auth::{Identity, LoginContext};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Upstream;
use crate::routes::RouteTable;

use access_log::{AccessLog, AccessLogLayer, AccessSettings};
use admission::{Admission, AdmissionLayer};
use client_login::{ClientLogin, ClientLoginLayer};
use errors::{ErrorLayer, Errors};
use forward::{Forward, ForwardSettings};
use limits::{LimitsLayer, RequestLimits};
use location::{Location, LocationLayer};
use portal_hint::{HintSettings, PortalHint, PortalHintLayer};
use recover::{Recover, RecoverLayer, RecoverSettings};
use request_id::{RequestId, RequestIdLayer};
use route::{Route, RouteLayer};
use session::{SessionLayer, SessionService};

/// The whole stack's type, outermost first (the same order as [`build`]).
pub(crate) type Stack = RequestId<
    AccessLog<
        Errors<
            RequestLimits<
                Admission<
                    Route<
                        ClientLogin<
                            Location<PortalHint<Recover<SessionService<Forward<Upstream>>>>>,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// What the stack is built from.
pub(crate) struct Parts<'a> {
    /// The validated config.
    pub(crate) config: &'a Config,
    /// The identities, in config order (sessions and all).
    pub(crate) identities: &'a Arc<[Arc<Identity>]>,
    /// Settings every login shares.
    pub(crate) login: &'a LoginContext,
    /// The connection pool to Creatio.
    pub(crate) client: &'a Upstream,
    /// Where requests are counted.
    pub(crate) metrics: &'a Metrics,
}

/// Builds the stack for one config. Called at start and at each reload, never per request.
pub(crate) fn build(parts: &Parts<'_>) -> Stack {
    let config = parts.config;
    let route_prefixes: Vec<Arc<str>> = config
        .routes
        .iter()
        .map(|r| Arc::from(r.prefix.as_str()))
        .collect();
    let identity_names: Vec<Arc<str>> = parts.identities.iter().map(|i| i.name().clone()).collect();
    let route_metrics: Vec<_> = config
        .routes
        .iter()
        .map(|r| Some(r.prefix.as_str()))
        .chain([None])
        .map(|prefix| parts.metrics.route(prefix))
        .collect();
    let latency = route_metrics.iter().map(|m| m.upstream.clone()).collect();

    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(AccessLogLayer::new(AccessSettings {
            route_prefixes: route_prefixes.clone(),
            identities: identity_names.clone(),
            route_metrics,
            log_query: config.log.query,
        }))
        .layer(ErrorLayer)
        .layer(LimitsLayer::new(&config.limits))
        .layer(AdmissionLayer::new(config.client_tokens.clone()))
        .layer(RouteLayer::new(
            RouteTable::new(config),
            config.creatio.clone(),
        ))
        .layer(ClientLoginLayer::new(
            parts.identities.clone(),
            parts.login.clone(),
        ))
        .layer(LocationLayer::new(
            &config.creatio,
            config.limits.public_url.as_ref(),
        ))
        .layer(PortalHintLayer::new(HintSettings {
            route_prefixes,
            identities: identity_names,
            timeout: config.upstream_timeout,
        }))
        .layer(RecoverLayer::new(RecoverSettings {
            identities: parts.identities.clone(),
            login: parts.login.clone(),
            replay_limit: config.replay_buffer,
            timeout: config.upstream_timeout,
        }))
        .layer(SessionLayer::new(
            parts.identities.clone(),
            parts.login.clone(),
        ))
        .service(Forward::new(
            parts.client.clone(),
            ForwardSettings {
                timeout: config.upstream_timeout,
                target: Arc::from(config.creatio.host_port()),
                latency,
                bytes_out: parts.metrics.bytes_out.clone(),
            },
        ))
}
