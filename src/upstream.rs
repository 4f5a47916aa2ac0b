//! The connection to Creatio: a pooled hyper-util client over rustls, and the header rules
//! applied to everything that crosses the proxy.
//!
//! - TLS certificates are verified against the webpki roots plus `creatio.ca_file`, unless
//!   `creatio.insecure_skip_verify = true` (the proxy then warns at every start and reload).
//! - Connections leave directly or through an egress proxy ([`crate::egress`]).
//! - Connections are pooled and reused (keep-alive, TCP_NODELAY; see [`crate::pool`]);
//!   concurrency to Creatio follows the clients' concurrency.
//! - Redirects are never followed: a 302 is Creatio's answer and is either a session expiry
//!   (handled by the auth layer) or passed to the client as is.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::Config;
use crate::egress::{Connector, EgressRules};
use crate::pool::Upstream;
use http::Uri;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `creatio.ca_file` unreadable or not PEM.
    #[error("creatio.ca_file: {0}")]
    CaFile(String),
    /// rustls refused the configuration.
    #[error("TLS set-up failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Builds the connection pool to Creatio for `config`.
pub(crate) fn build_upstream(config: &Config) -> Result<Upstream, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let (Some(path), Some(pem)) = (&config.ca_file, &config.ca_pem) {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ClientError::CaFile(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::CaFile(format!("{}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(ClientError::CaFile(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let tls = if config.insecure_skip_verify {
        tracing::warn!(
            "creatio.insecure_skip_verify = true: the TLS certificates of Creatio and the Identity \
             Service are NOT checked, so anyone on the network path can read the session; give \
             the server's CA with creatio.ca_file instead"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let rules = Arc::new(EgressRules::new(&config.egress, config.no_proxy.as_deref()));
    let connector = Connector::new(http, rules.clone(), config.connect_timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    let origin = Uri::builder()
        .scheme(config.creatio.scheme.clone())
        .authority(config.creatio.authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| ClientError::CaFile(format!("creatio.url: {e}")))?;
    Ok(Upstream::new(https, rules, origin))
}

/// `insecure_skip_verify`: accepts any certificate, but still checks that the server holds
/// the key of the certificate it showed (the handshake signatures), so the connection is
/// encrypted to whoever answered.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
///
/// One pass over the names first: most messages carry none of these headers, and a scan is
/// much cheaper than a hashed lookup per listed header.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let any = headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || k == header::UPGRADE);
    if !any {
        return;
    }
    if let Some(named) = connection_named(headers) {
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

fn connection_named(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut out = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                out.push(name);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The Creatio `BPMCSRF` header.
pub(crate) static BPMCSRF_HEADER: HeaderName = HeaderName::from_static("bpmcsrf");

/// Removes what the client must not send to Creatio: its own credentials (`Cookie`, `BPMCSRF`,
/// `Authorization`, `X-Api-Key`), `Set-Cookie` lines some ESBs send back as request headers,
/// and `Host` (the upstream's is set from the URL).
pub(crate) fn strip_client_credentials(headers: &mut HeaderMap) {
    let x_api_key = HeaderName::from_static("x-api-key");
    let any = headers.keys().any(|k| {
        k == header::COOKIE
            || k == BPMCSRF_HEADER
            || k == header::AUTHORIZATION
            || k == x_api_key
            || k == header::SET_COOKIE
            || k == header::HOST
    });
    if !any {
        return;
    }
    headers.remove(header::COOKIE);
    headers.remove(&BPMCSRF_HEADER);
    headers.remove(header::AUTHORIZATION);
    headers.remove(x_api_key);
    headers.remove(header::SET_COOKIE);
    headers.remove(header::HOST);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("Keep-Alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn client_credentials_are_stripped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("cookie", "a=b"),
            ("bpmcsrf", "x"),
            ("authorization", "Basic Zm9vOmJhcg=="),
            ("set-cookie", ".ASPXAUTH=stolen"),
            ("host", "localhost:5080"),
            ("x-api-key", "k"),
            ("accept", "*/*"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_client_credentials(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["accept"]
        );
    }
}
