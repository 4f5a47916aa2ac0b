//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! One [`Metrics`] lives as long as the server (a config reload keeps it, so counters go on
//! counting). The request path never looks a metric up by its labels: routes and identities
//! get their handles when the config is applied ([`RouteMetrics`], [`IdentityMetrics`]), and a
//! request's counter is created on first use and then reached by index. Gauges that describe
//! state (session age, back-off, readiness) are set from the live identities at scrape time.
//!
//! Names (all start with `creatio_proxy_`; counters end in `_total`):
//! - `requests_total{route,method,status}`: answers sent to clients; `status` is the class
//!   (`2xx` .. `5xx`), `method` one of GET HEAD POST PUT PATCH DELETE OPTIONS or `other`,
//!   `route` the route's prefix or `-` for paths no route matches.
//! - `upstream_duration_seconds{route}`: histogram of the wait for Creatio's response head.
//! - `logins_total{identity,outcome}` (forms) and `token_requests_total{identity,outcome}`
//!   (oauth2): `outcome` is `ok` or the failure's diagnosis code.
//! - `relogins_total{identity}`: logins made because the session in use stopped working.
//! - `replays_total{identity,outcome}`: requests sent again after a re-login (`ok`,
//!   `expired_again`, `not_replayable`).
//! - `login_backoff_seconds{identity}`: time until the next login attempt is allowed.
//! - `session_age_seconds{identity}`: age of the session or token in use (absent: none).
//! - `identity_ready{identity}`: 1 when the identity holds a usable session or token.
//! - `request_body_bytes_total`, `response_body_bytes_total`: body bytes read from clients
//!   and from Creatio.
//! - `open_connections`: client connections open now.
//! - `config_reloads_total{outcome}`: `applied` or `refused`.
//! - `connections_closed_total{reason}`: client connections the proxy closed itself:
//!   `header_timeout` (no request head within `server.header_read_timeout` of accept),
//!   `idle` (`server.idle_timeout`), `send_timeout` (the client stopped reading),
//!   `shed` (idle, closed to make room at `server.max_connections`), `refused` (no room).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The Content-Type of `/metrics`.
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;
type SecondsGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Upper bounds of the upstream latency buckets, in seconds: 1 ms to a minute.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric the proxy keeps, and the registry that renders them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    upstream: HistogramFamily,
    logins: Family<Labels, Counter>,
    token_requests: Family<Labels, Counter>,
    relogins: Family<Labels, Counter>,
    replays: Family<Labels, Counter>,
    backoff: Family<Labels, SecondsGauge>,
    session_age: Family<Labels, SecondsGauge>,
    ready: Family<Labels, Gauge>,
    /// Request body bytes sent to Creatio.
    pub bytes_in: Counter,
    /// Response body bytes sent to clients.
    pub bytes_out: Counter,
    /// Client connections open now.
    pub open_connections: Gauge,
    reloads: Family<Labels, Counter>,
    closed: Family<Labels, Counter>,
    store_up: Family<Labels, Gauge>,
    store_errors: Family<Labels, Counter>,
    store_adopted: Family<Labels, Counter>,
    render_lock: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("creatio_proxy");
        let requests = Family::<Labels, Counter>::default();
        let upstream: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let logins = Family::<Labels, Counter>::default();
        let token_requests = Family::<Labels, Counter>::default();
        let relogins = Family::<Labels, Counter>::default();
        let replays = Family::<Labels, Counter>::default();
        let backoff = Family::<Labels, SecondsGauge>::default();
        let session_age = Family::<Labels, SecondsGauge>::default();
        let ready = Family::<Labels, Gauge>::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let open_connections = Gauge::default();
        let reloads = Family::<Labels, Counter>::default();
        let closed = Family::<Labels, Counter>::default();
        let store_up = Family::<Labels, Gauge>::default();
        let store_errors = Family::<Labels, Counter>::default();
        let store_adopted = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Answers sent to clients, by route, method and status class",
            requests.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request to Creatio to its response head",
            upstream.clone(),
        );
        registry.register(
            "logins",
            "Creatio logins (forms identities), by identity and outcome",
            logins.clone(),
        );
        registry.register(
            "token_requests",
            "OAuth 2.0 token requests (oauth2 identities), by identity and outcome",
            token_requests.clone(),
        );
        registry.register(
            "relogins",
            "Logins made because the session or token in use stopped working",
            relogins.clone(),
        );
        registry.register(
            "replays",
            "Requests sent again after a re-login, by outcome",
            replays.clone(),
        );
        registry.register(
            "login_backoff_seconds",
            "Time until the next login attempt is allowed (0: none pending)",
            backoff.clone(),
        );
        registry.register(
            "session_age_seconds",
            "Age of the session or token in use",
            session_age.clone(),
        );
        registry.register(
            "identity_ready",
            "1 when the identity holds a usable session or token",
            ready.clone(),
        );
        registry.register(
            "request_body_bytes",
            "Request body bytes received from clients (and forwarded to Creatio)",
            bytes_in.clone(),
        );
        registry.register(
            "response_body_bytes",
            "Response body bytes received from Creatio (and forwarded to clients)",
            bytes_out.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP), by outcome",
            reloads.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections closed by the proxy, by reason",
            closed.clone(),
        );
        registry.register(
            "session_store_up",
            "1 while the session store ([session_store]) answers, 0 while it does not",
            store_up.clone(),
        );
        registry.register(
            "session_store_errors",
            "Session store operations that failed, by kind",
            store_errors.clone(),
        );
        registry.register(
            "session_store_adopted",
            "Sessions or tokens taken from the session store instead of logging in, by identity",
            store_adopted.clone(),
        );
        Metrics {
            registry,
            requests,
            upstream,
            logins,
            token_requests,
            relogins,
            replays,
            backoff,
            session_age,
            ready,
            bytes_in,
            bytes_out,
            open_connections,
            reloads,
            closed,
            store_up,
            store_errors,
            store_adopted,
            render_lock: std::sync::Mutex::new(()),
        }
    }

    /// Handles for one route (`None`: paths no route matches).
    pub(crate) fn route(&self, prefix: Option<&str>) -> RouteMetrics {
        let route = prefix.unwrap_or("-").to_string();
        RouteMetrics {
            upstream: self
                .upstream
                .get_or_create_owned(&vec![("route", route.clone())]),
            requests: self.requests.clone(),
            route,
            counters: Default::default(),
        }
    }

    /// Handles for one identity.
    pub(crate) fn identity(&self, name: &str, oauth2: bool) -> IdentityMetrics {
        let labels = |extra: Option<&str>| {
            let mut l: Labels = vec![("identity", name.to_string())];
            if let Some(outcome) = extra {
                l.push(("outcome", outcome.to_string()));
            }
            l
        };
        let logins = if oauth2 {
            self.token_requests.clone()
        } else {
            self.logins.clone()
        };
        IdentityMetrics {
            name: name.to_string(),
            login_ok: logins.get_or_create_owned(&labels(Some("ok"))),
            logins,
            relogins: self.relogins.get_or_create_owned(&labels(None)),
            replay_ok: self.replays.get_or_create_owned(&labels(Some("ok"))),
            replay_refused: self
                .replays
                .get_or_create_owned(&labels(Some("expired_again"))),
            replay_impossible: self
                .replays
                .get_or_create_owned(&labels(Some("not_replayable"))),
            adopted: self.store_adopted.clone(),
        }
    }

    /// Counts a config reload.
    pub(crate) fn reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.reloads
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// Counts a client connection the proxy closed itself (see the module docs for reasons).
    pub(crate) fn connection_closed(&self, reason: &'static str) {
        self.closed
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Sets whether the session store at `store` (its URL without a password) answers.
    pub(crate) fn session_store_up(&self, store: &str, up: bool) {
        self.store_up
            .get_or_create(&vec![("store", store.to_string())])
            .set(i64::from(up));
    }

    /// Counts a failed session store operation: `unreachable`, `timeout`, `undecryptable`,
    /// `refused` (an error answer) or `invalid` (a value that is not a stored session).
    pub(crate) fn session_store_error(&self, kind: &'static str) {
        self.store_errors
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// Renders every metric in the Prometheus text format, after setting the state gauges
    /// from `identities`.
    pub(crate) fn render(&self, identities: &[IdentityState]) -> String {
        // The state gauges are cleared and refilled: one scrape at a time, or a concurrent
        // one could miss them. (No await inside; a poisoned lock only means a past panic.)
        let _one_at_a_time = self
            .render_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.backoff.clear();
        self.session_age.clear();
        self.ready.clear();
        for i in identities {
            let labels: Labels = vec![("identity", i.name.to_string())];
            self.backoff
                .get_or_create(&labels)
                .set(i.backoff.map_or(0.0, |d| d.as_secs_f64()));
            if let Some(age) = i.session_age {
                self.session_age
                    .get_or_create(&labels)
                    .set(age.as_secs_f64());
            }
            self.ready.get_or_create(&labels).set(i64::from(i.ready));
        }
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// What `/metrics` shows of one identity's state.
#[derive(Debug, Clone)]
pub(crate) struct IdentityState {
    /// Identity name.
    pub name: Arc<str>,
    /// Time until the next login attempt is allowed, if a back-off runs.
    pub backoff: Option<Duration>,
    /// Age of the session in use, if any.
    pub session_age: Option<Duration>,
    /// A usable session or token is held.
    pub ready: bool,
}

/// Method index for [`RouteMetrics`]: the common methods by name, the rest as `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// One route's handles: a request counter per method and status class (made on first use,
/// so only series that happened are shown) and the upstream latency histogram.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: String,
    requests: Family<Labels, Counter>,
    counters: [[OnceLock<Counter>; 5]; 8],
    /// Wait for Creatio's response head.
    pub upstream: Histogram,
}

impl RouteMetrics {
    /// Counts one answer to a client.
    pub(crate) fn count(&self, method: &Method, status: u16) {
        let m = method_index(method);
        let s = usize::from(status / 100).clamp(1, 5) - 1;
        self.counters[m][s]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&vec![
                    ("route", self.route.clone()),
                    ("method", METHODS[m].to_string()),
                    ("status", STATUS_CLASSES[s].to_string()),
                ])
            })
            .inc();
    }
}

/// One identity's handles.
#[derive(Debug, Clone)]
pub(crate) struct IdentityMetrics {
    name: String,
    logins: Family<Labels, Counter>,
    login_ok: Counter,
    relogins: Counter,
    replay_ok: Counter,
    replay_refused: Counter,
    replay_impossible: Counter,
    adopted: Family<Labels, Counter>,
}

impl Default for IdentityMetrics {
    /// Handles that count into a registry nobody renders (for `check`).
    fn default() -> Self {
        Metrics::new().identity("-", false)
    }
}

impl IdentityMetrics {
    /// A login or token request ended: `failure` is the diagnosis code when it failed.
    pub(crate) fn login(&self, failure: Option<&'static str>) {
        match failure {
            None => self.login_ok.inc(),
            Some(code) => self
                .logins
                .get_or_create(&vec![
                    ("identity", self.name.clone()),
                    ("outcome", code.to_string()),
                ])
                .inc(),
        };
    }

    /// Counts a session taken from the session store instead of a login.
    pub(crate) fn adopted(&self) {
        self.adopted
            .get_or_create(&vec![("identity", self.name.clone())])
            .inc();
    }

    /// A login was made to replace a session that stopped working.
    pub(crate) fn relogin(&self) {
        self.relogins.inc();
    }

    /// A replay after a re-login: it worked, it met an expired session again, or the body
    /// could not be replayed.
    pub(crate) fn replay(&self, outcome: Replay) {
        match outcome {
            Replay::Ok => self.replay_ok.inc(),
            Replay::ExpiredAgain => self.replay_refused.inc(),
            Replay::NotReplayable => self.replay_impossible.inc(),
        };
    }
}

/// How a replay ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Replay {
    /// Creatio took it.
    Ok,
    /// Creatio answered "expired" again.
    ExpiredAgain,
    /// The body had streamed and could not be sent again.
    NotReplayable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_counts_render_as_prometheus_text() {
        let m = Metrics::new();
        let route = m.route(Some("/0/rest/UsrPortalService"));
        route.count(&Method::GET, 200);
        route.count(&Method::GET, 204);
        route.count(&Method::from_bytes(b"PROPFIND").expect("method"), 502);
        route.upstream.observe(0.003);
        let id = m.identity("portal", false);
        id.login(None);
        id.login(Some("wrong_credentials"));
        id.relogin();
        id.replay(Replay::Ok);
        m.bytes_in.inc_by(10);
        m.reload(false);
        let text = m.render(&[IdentityState {
            name: Arc::from("portal"),
            backoff: Some(Duration::from_millis(1500)),
            session_age: Some(Duration::from_secs(42)),
            ready: true,
        }]);
        for line in [
            "creatio_proxy_requests_total{route=\"/0/rest/UsrPortalService\",method=\"GET\",status=\"2xx\"} 2",
            "creatio_proxy_requests_total{route=\"/0/rest/UsrPortalService\",method=\"other\",status=\"5xx\"} 1",
            "creatio_proxy_upstream_duration_seconds_bucket{route=\"/0/rest/UsrPortalService\",le=\"0.0025\"} 0",
            "creatio_proxy_upstream_duration_seconds_bucket{route=\"/0/rest/UsrPortalService\",le=\"0.005\"} 1",
            "creatio_proxy_logins_total{identity=\"portal\",outcome=\"ok\"} 1",
            "creatio_proxy_logins_total{identity=\"portal\",outcome=\"wrong_credentials\"} 1",
            "creatio_proxy_relogins_total{identity=\"portal\"} 1",
            "creatio_proxy_replays_total{identity=\"portal\",outcome=\"ok\"} 1",
            "creatio_proxy_login_backoff_seconds{identity=\"portal\"} 1.5",
            "creatio_proxy_session_age_seconds{identity=\"portal\"} 42.0",
            "creatio_proxy_identity_ready{identity=\"portal\"} 1",
            "creatio_proxy_request_body_bytes_total 10",
            "creatio_proxy_config_reloads_total{outcome=\"refused\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("token_requests_total{"), "{text}");
    }
}
