//! The admin listener: `GET /healthz`, `/readyz`, `/metrics`, and `POST /reload` (loopback
//! clients only).
//!
//! It serves on its own port, apart from the request stack: a probe never competes with
//! traffic for a route or an identity, and a client of the proxy port never reaches these.
//! Loopback clients are always admitted (the image's HEALTHCHECK and `creatio-proxy reload` run
//! beside the proxy); others only when `server.allowed_clients` lets them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::accept::{is_allowed, is_transient};
use crate::body::ProxyBody;
use crate::conn::{AcceptBackoff, Listener};
use crate::metrics::IdentityState;
use crate::reload::Reloader;
use crate::state::ServerState;

/// Serves the admin endpoints on `listener` until the process ends, its connections held to
/// `limits` ([`crate::conn`]: the same timeouts as the proxy port, fewer connections).
pub(crate) async fn serve_admin(
    listener: TcpListener,
    state: Arc<ServerState>,
    limits: Arc<Listener>,
) {
    if let Ok(addr) = listener.local_addr() {
        if let Some(warning) = exposure_warning(addr, &state.live.load().config.allowed_clients) {
            tracing::warn!(admin = %addr, "{warning}");
        }
    }
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            // Loopback is always let in: the image's HEALTHCHECK and `creatio-proxy reload` run
            // beside the proxy, whatever server.allowed_clients says about remote clients.
            Ok((stream, peer))
                if peer.ip().to_canonical().is_loopback()
                    || is_allowed(&state.live.load().config.allowed_clients, peer) =>
            {
                backoff.reset();
                (stream, peer)
            }
            Ok(_) => continue,
            Err(e) => {
                if !is_transient(&e) {
                    // e.g. out of file descriptors: do not spin.
                    limits.shed_idle();
                    tokio::time::sleep(backoff.failed(limits.name, &e)).await;
                }
                continue;
            }
        };
        let Some(permit) = limits.admit().await else {
            limits.refuse(stream);
            continue;
        };
        let state = state.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(admin_answer(&req, peer, &state).await) }
        });
        tokio::spawn(limits.clone().serve(stream, svc, permit));
    }
}

/// The start-up warning for an admin listener that anyone who reaches it may use: bound off
/// loopback with `server.allowed_clients` empty (which admits every address). The admin port
/// shows identity names, principals and login diagnoses (`/readyz`) and traffic figures
/// (`/metrics`); `POST /reload` stays loopback-only whatever the config says.
fn exposure_warning(addr: SocketAddr, allowed: &[crate::config::IpBlock]) -> Option<String> {
    if addr.ip().to_canonical().is_loopback() || !allowed.is_empty() {
        return None;
    }
    Some(format!(
        "the admin listener ({addr}) is off loopback and server.allowed_clients is empty: any client that reaches port {} can read /readyz (identities, principals, login diagnoses) and /metrics; set server.allowed_clients to the addresses of your probes and scrapers, or bind admin.listen to 127.0.0.1",
        addr.port()
    ))
}

/// Longest time `/readyz` waits for a login it started (probes time out after a few seconds).
const READY_WAIT: Duration = Duration::from_secs(2);

/// `/healthz`: the process runs. `/readyz`: every identity holds a usable session or token,
/// or just got one (the probe logs in when there is none, within the login back-off; never
/// while an identity's logins are stopped after a locked account or an expired password).
/// `/metrics`: Prometheus text. `POST /reload`: re-read the config file, from loopback only.
async fn admin_answer(
    req: &Request<Incoming>,
    peer: SocketAddr,
    state: &Arc<ServerState>,
) -> Response<ProxyBody> {
    if req.uri().path() == "/reload" {
        return reload_answer(req, peer, state).await;
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return admin_response(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method_not_allowed","message":"the admin endpoints answer GET"}"#
                .to_string(),
            "application/json; charset=utf-8",
        );
    }
    match req.uri().path() {
        "/healthz" => admin_response(
            StatusCode::OK,
            r#"{"status":"ok"}"#.to_string(),
            "application/json; charset=utf-8",
        ),
        "/readyz" => {
            let (status, body) = readiness(state).await;
            admin_response(status, body.to_string(), "application/json; charset=utf-8")
        }
        "/metrics" => {
            let shared = state.live.load_full();
            let identities: Vec<IdentityState> = shared
                .identities
                .iter()
                .map(|i| {
                    let current = i.current();
                    IdentityState {
                        name: i.name().clone(),
                        backoff: i.backoff().map(|(_, left)| left),
                        session_age: current.as_ref().map(|s| s.obtained.elapsed()),
                        ready: current.as_deref().is_some_and(usable),
                    }
                })
                .collect();
            admin_response(
                StatusCode::OK,
                state.metrics.render(&identities),
                crate::metrics::CONTENT_TYPE,
            )
        }
        _ => admin_response(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found","message":"admin endpoints: GET /healthz, /readyz, /metrics; POST /reload"}"#
                .to_string(),
            "application/json; charset=utf-8",
        ),
    }
}

/// `POST /reload`: the same as SIGHUP, with the outcome in the answer. Only a client on this
/// host's loopback may ask (in a pod: `kubectl exec`; the admin port itself may face the pod
/// network for the kubelet's probes), since a reload re-reads files and restarts identities.
async fn reload_answer(
    req: &Request<Incoming>,
    peer: SocketAddr,
    state: &Arc<ServerState>,
) -> Response<ProxyBody> {
    const JSON: &str = "application/json; charset=utf-8";
    if req.method() != http::Method::POST {
        return admin_response(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method_not_allowed","message":"POST /reload re-reads the config file"}"#
                .to_string(),
            JSON,
        );
    }
    if !peer.ip().to_canonical().is_loopback() {
        return admin_response(
            StatusCode::FORBIDDEN,
            r#"{"error":"forbidden","message":"POST /reload is answered only to clients on this host's loopback (e.g. creatio-proxy reload run beside the proxy)"}"#
                .to_string(),
            JSON,
        );
    }
    let Some(path) = state.config_path.get().cloned() else {
        return admin_response(
            StatusCode::CONFLICT,
            r#"{"error":"no_config_file","message":"this proxy was not started from a config file"}"#
                .to_string(),
            JSON,
        );
    };
    let reloader = Reloader {
        state: state.clone(),
    };
    // Reading files blocks: off the async workers.
    let outcome = tokio::task::spawn_blocking(move || reloader.reload_file(&path)).await;
    let (status, body) = match outcome {
        Ok(Ok(())) => (
            StatusCode::OK,
            serde_json::json!({"status": "applied", "message": "config reloaded; new requests use it"}),
        ),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"status": "refused", "message": format!("the running config stays: {e}")}),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"status": "refused", "message": "the reload failed unexpectedly; the running config stays"}),
        ),
    };
    admin_response(status, body.to_string(), JSON)
}

/// A session that may be sent now: a cookie session, or a token before its stop time.
fn usable(s: &crate::auth::Session) -> bool {
    s.expires_in().is_none_or(|left| !left.is_zero())
}

async fn readiness(state: &ServerState) -> (StatusCode, serde_json::Value) {
    if state.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "shutting_down", "message": "the proxy is finishing in-flight requests and stops soon"}),
        );
    }
    let shared = state.live.load_full();
    let mut checks = tokio::task::JoinSet::new();
    let mut unanswered = Vec::new();
    let mut not_ready = Vec::new();
    for (index, identity) in shared.identities.iter().enumerate() {
        if identity.current().as_deref().is_some_and(usable) {
            continue;
        }
        // Stopped logins: said as they are, and no attempt (`crate::auth`, rule 6).
        if let Some((failure, left)) = identity.logins_stopped() {
            not_ready.push((index, stopped_entry(identity, &failure, left)));
            continue;
        }
        unanswered.push(index);
        let identity = identity.clone();
        let ctx = shared.login.clone();
        checks.spawn(async move {
            let outcome = tokio::time::timeout(READY_WAIT, identity.session(&ctx)).await;
            (index, identity, outcome)
        });
    }
    while let Some(joined) = checks.join_next().await {
        // A check that panicked leaves its index in `unanswered`: not ready, below.
        let Ok((index, identity, outcome)) = joined else {
            continue;
        };
        unanswered.retain(|i| *i != index);
        let mut entry = serde_json::json!({
            "identity": identity.name().as_ref(),
            "principal": identity.principal(),
        });
        match outcome {
            Ok(Ok(session)) if usable(&session) => continue,
            Ok(Ok(_)) => {
                entry["error"] = "token_expired".into();
                entry["reason"] = "the token just obtained is already past its usable time".into();
            }
            Ok(Err(e)) => {
                entry["error"] = e.code().into();
                if let crate::error::ProxyError::LoginFailed {
                    failure,
                    retry_after,
                    ..
                } = &e
                {
                    entry["diagnosis"] = failure.diagnosis.code().into();
                    if let Some(wait) = retry_after {
                        entry["retry_after_seconds"] = wait.as_secs().max(1).into();
                    }
                }
                entry["reason"] = e.to_string().into();
            }
            Err(_) => {
                entry["error"] = "login_in_progress".into();
                entry["reason"] = format!(
                    "a {} is under way and did not finish within {READY_WAIT:?}",
                    if identity.is_oauth2() {
                        "token request"
                    } else {
                        "Creatio login"
                    }
                )
                .into();
            }
        }
        not_ready.push((index, entry));
    }
    for index in unanswered {
        if let Some(identity) = shared.identities.get(index) {
            let entry = serde_json::json!({
                "identity": identity.name().as_ref(),
                "principal": identity.principal(),
                "error": "check_failed",
                "reason": "the readiness check of this identity failed unexpectedly",
            });
            not_ready.push((index, entry));
        }
    }
    // The store never decides readiness: without it each replica serves with a session of
    // its own. It is only reported.
    // A store marked down is asked again (one PING within its timeout): probes are what
    // notices it is back when no login needs it.
    let store = match state.live.load().store.clone() {
        Some(s) => {
            let up = if s.recheck().await {
                "up"
            } else {
                "unreachable"
            };
            Some(serde_json::json!({"url": s.display(), "state": up}))
        }
        None => None,
    };
    let mut body = if not_ready.is_empty() {
        serde_json::json!({"status": "ready"})
    } else {
        not_ready.sort_by_key(|(i, _)| *i);
        let identities: Vec<serde_json::Value> = not_ready.into_iter().map(|(_, e)| e).collect();
        serde_json::json!({"status": "not_ready", "identities": identities})
    };
    let status = if body["status"] == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if let Some(store) = store {
        body["session_store"] = store;
    }
    (status, body)
}

/// The `/readyz` entry of an identity whose logins are stopped: the diagnosis, Creatio's
/// sentence, and when the proxy tries again (`retry_after_seconds`) or that only a reload
/// makes it (`"next_login": "after_reload"`).
fn stopped_entry(
    identity: &crate::auth::Identity,
    failure: &crate::auth::LoginFailure,
    left: Option<Duration>,
) -> serde_json::Value {
    let mut entry = serde_json::json!({
        "identity": identity.name().as_ref(),
        "principal": identity.principal(),
        "error": failure.error_code(),
        "diagnosis": failure.diagnosis.code(),
        "reason": failure.message,
        "logins_stopped": true,
    });
    match left {
        Some(left) => {
            entry["retry_after_seconds"] =
                (left.as_secs() + u64::from(left.subsec_nanos() > 0)).into();
            entry["next_login"] = "after_lock_window".into();
        }
        None => entry["next_login"] = "after_reload".into(),
    }
    entry
}

fn admin_response(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::*;
    use crate::config::IpBlock;

    #[test]
    fn an_admin_listener_off_loopback_without_allowed_clients_is_warned_about() {
        let blocks = |list: &[&str]| -> Vec<IpBlock> {
            list.iter().filter_map(|b| IpBlock::parse(b)).collect()
        };
        let cases = [
            ("127.0.0.1:5090", blocks(&[]), false),
            ("[::1]:5090", blocks(&[]), false),
            ("[::ffff:127.0.0.1]:5090", blocks(&[]), false),
            ("0.0.0.0:5090", blocks(&[]), true),
            ("[::]:5090", blocks(&[]), true),
            ("10.1.2.3:5090", blocks(&[]), true),
            ("0.0.0.0:5090", blocks(&["10.0.0.0/8"]), false),
        ];
        for (addr, allowed, warned) in cases {
            let addr: SocketAddr = addr.parse().expect("address");
            let warning = exposure_warning(addr, &allowed);
            assert_eq!(warning.is_some(), warned, "{addr} {allowed:?}");
            if let Some(w) = warning {
                assert!(w.contains("server.allowed_clients"), "{w}");
                assert!(w.contains(&addr.port().to_string()), "{w}");
            }
        }
    }
}
