//! Entry points for the criterion micro-benchmarks in `benches/hot_path.rs`: the per-request
//! work of the request path, one piece at a time, so that a regression shows before a load
//! test does. Not an API: each function wraps one internal piece with plain inputs and outputs.

use http::{HeaderMap, HeaderValue, Uri};

use crate::auth::{Jar, Session};
use crate::canonical::CanonicalPath;
use crate::config::Config;
use crate::routes::{apply_ssp, RouteTable};

/// The canonical form of a request's path (the fast path for an already canonical one):
/// its length, or `None` when it is refused.
pub fn canonical(uri: &Uri) -> Option<usize> {
    CanonicalPath::of_request(uri)
        .ok()
        .map(|p| p.as_str().len())
}

/// The /ssp rule applied to a canonical path: the rewritten length.
pub fn ssp(path: &str) -> usize {
    apply_ssp(path).len()
}

/// A config's route table.
pub struct Routes(RouteTable);

impl Routes {
    /// The table the proxy builds from `config`.
    pub fn new(config: &Config) -> Routes {
        Routes(RouteTable::new(config))
    }

    /// The identity index serving the canonical form of `uri`'s path, as the route layer
    /// decides it.
    pub fn decide(&self, uri: &Uri) -> Option<usize> {
        let path = CanonicalPath::of_request(uri).ok()?;
        self.0.decide(&path).map(|d| d.identity)
    }
}

/// A forms session made from a login's `Set-Cookie` lines.
pub struct Cookies {
    jar: Jar,
    session: Session,
}

impl Cookies {
    /// The jar after a login that set `lines`, and the session built from it.
    pub fn login(lines: &[HeaderValue]) -> Cookies {
        let mut jar = Jar::default();
        for line in lines {
            jar.apply(line);
        }
        let session = Cookies::session_of(&jar);
        Cookies { jar, session }
    }

    fn session_of(jar: &Jar) -> Session {
        Session {
            generation: 1,
            cookie: jar.cookie_header(),
            csrf: jar.csrf_header(),
            authorization: None,
            obtained: tokio::time::Instant::now(),
            refresh_at: None,
            expires_at: None,
            shared: 0,
        }
    }

    /// Renders the `Cookie` line and the `BPMCSRF` header (what a changed jar costs).
    pub fn render(&self) -> (Option<HeaderValue>, Option<HeaderValue>) {
        (self.jar.cookie_header(), self.jar.csrf_header())
    }

    /// Merges a `Set-Cookie` line of a forwarded answer (a sliding renewal); true when the jar
    /// changed.
    pub fn merge(&mut self, set_cookie: &HeaderValue) -> bool {
        self.jar.apply_forwarded(set_cookie)
    }

    /// The session layer's header work on a client's request headers: hop-by-hop headers and
    /// the client's credentials out, the session's `Cookie` and `BPMCSRF` in.
    pub fn attach(&self, headers: &mut HeaderMap) {
        crate::stack::session::attach(headers, &self.session);
    }
}
