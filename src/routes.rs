//! Which identity serves a path, and how the path is rewritten for Creatio.
//!
//! Rules:
//! 1. Routes decide on the canonical path only ([`CanonicalPath`]): percent-escapes decoded,
//!    slashes collapsed, ambiguous spellings (dot segments, encoded `/`, `;`, ...) already
//!    refused. Route prefixes are canonical too (the config is checked at load).
//! 2. The longest `[[routes]]` prefix wins. Prefixes match whole segments (`/0/rest/A` matches
//!    `/0/rest/A`, `/0/rest/A/M` and the OData key form `/0/rest/A(1)`, not `/0/rest/AB`) and
//!    ASCII case-insensitively, because IIS serves `/0/REST/A` as `/0/rest/A`: a case variant
//!    must not escape its route. They match modulo the spellings Creatio serves one service
//!    under ([`route_key`]): with or without a leading `/0`, with or without `ssp`, so a client
//!    that writes `/0/ssp/rest/A` or `/rest/A` itself still meets the route `/0/rest/A`. No two
//!    prefixes are equal in that sense (refused at load), so a path matches at most one
//!    longest prefix.
//! 3. Unmatched paths go to the default identity (or are refused when `unmatched = "deny"`).
//! 4. `ssp = true` applies the contract's /ssp rule ([`apply_ssp`]) to the canonical path.

use std::borrow::Cow;

use crate::canonical::{route_key, starts_with_segments, CanonicalPath};
use crate::config::{Config, RouteConfig, Unmatched};

/// What the route table decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteDecision {
    /// Index of the identity (into the proxy's identity list).
    pub identity: usize,
    /// Apply the /ssp rule.
    pub ssp: bool,
    /// Index of the matched route, `None` for the default.
    pub route: Option<usize>,
    /// Largest request body: the route's `max_body`, else `server.max_body`; `None`: no limit.
    pub max_body: Option<u64>,
}

/// The compiled route table; built once, read on every request.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    /// Routes sorted by prefix length, longest first, with their original index.
    routes: Vec<(usize, RouteConfig)>,
    default: Option<usize>,
    /// `server.max_body`.
    max_body: Option<u64>,
}

impl RouteTable {
    /// Builds the table from a validated config.
    pub(crate) fn new(config: &Config) -> RouteTable {
        let mut routes: Vec<(usize, RouteConfig)> =
            config.routes.iter().cloned().enumerate().collect();
        // Longest first by what is compared (the route key), so the longest match wins.
        routes.sort_by_key(|r| std::cmp::Reverse(route_key(&r.1.prefix).len()));
        let default = match config.unmatched {
            Unmatched::Forward => config.default_identity,
            Unmatched::Deny => None,
        };
        RouteTable {
            routes,
            default,
            max_body: config.limits.max_body,
        }
    }

    /// The decision for `path`, or `None` when nothing serves it.
    pub(crate) fn decide(&self, path: &CanonicalPath) -> Option<RouteDecision> {
        let key = route_key(path.as_str());
        for (index, route) in &self.routes {
            if starts_with_segments(key, route_key(&route.prefix)) {
                return Some(RouteDecision {
                    identity: route.identity,
                    ssp: route.ssp,
                    route: Some(*index),
                    max_body: route.max_body.unwrap_or(self.max_body),
                });
            }
        }
        self.default.map(|identity| RouteDecision {
            identity,
            ssp: false,
            route: None,
            max_body: self.max_body,
        })
    }
}

/// The contract's /ssp rule: insert `ssp` after a leading `/0` segment, else at the start;
/// leave a path that already carries it alone.
///
/// `/0/rest/S/M` → `/0/ssp/rest/S/M`; `/rest/S/M` → `/ssp/rest/S/M`; `/0/ssp/x` unchanged.
pub(crate) fn apply_ssp(path: &str) -> Cow<'_, str> {
    if starts_with_segment(path, "/0") {
        let rest = &path[2..];
        if starts_with_segment(rest, "/ssp") {
            return Cow::Borrowed(path);
        }
        return Cow::Owned(format!("/0/ssp{rest}"));
    }
    if starts_with_segment(path, "/ssp") {
        return Cow::Borrowed(path);
    }
    Cow::Owned(format!("/ssp{path}"))
}

/// True when `path` starts with the whole segment `seg` (`/0`, `/ssp`), ignoring ASCII case.
/// Byte-wise: request paths may hold raw UTF-8, and slicing a `str` inside a character would
/// panic; a match is ASCII, so slicing right after it is safe.
fn starts_with_segment(path: &str, seg: &str) -> bool {
    let (path, seg) = (path.as_bytes(), seg.as_bytes());
    path.len() >= seg.len()
        && path[..seg.len()].eq_ignore_ascii_case(seg)
        && path.get(seg.len()).is_none_or(|b| *b == b'/')
}

/// True when `path` already carries the `/ssp` segment where the /ssp rule puts it.
pub(crate) fn has_ssp(path: &str) -> bool {
    if starts_with_segment(path, "/0") {
        starts_with_segment(&path[2..], "/ssp")
    } else {
        starts_with_segment(path, "/ssp")
    }
}

/// The inverse of [`apply_ssp`]: `/0/ssp/x` → `/0/x`, `/ssp/x` → `/x`; other paths unchanged.
/// For a `Location` on an ssp route, so that following it matches the same route again.
pub(crate) fn remove_ssp(path: &str) -> Cow<'_, str> {
    if starts_with_segment(path, "/0") && starts_with_segment(&path[2..], "/ssp") {
        return Cow::Owned(format!("/0{}", &path[6..]));
    }
    if starts_with_segment(path, "/ssp") {
        let rest = &path[4..];
        return Cow::Owned(if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        });
    }
    Cow::Borrowed(path)
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::*;

    #[test]
    fn remove_ssp_undoes_apply_ssp() {
        for path in ["/0/rest/S/M", "/0/odata/Contact(1)", "/rest/S/M", "/0", "/"] {
            assert_eq!(remove_ssp(&apply_ssp(path)), path, "{path}");
        }
        assert_eq!(remove_ssp("/0/sspx/a"), "/0/sspx/a");
        assert_eq!(remove_ssp("/0/SSP/a"), "/0/a");
        assert_eq!(remove_ssp("/ü/ssp"), "/ü/ssp");
    }

    #[test]
    fn has_ssp_agrees_with_apply_ssp() {
        for path in [
            "/0/ssp/x",
            "/0/SSP",
            "/ssp",
            "/ssp/x",
            "/0/x",
            "/0",
            "/",
            "/sspx",
            "/0/sspx/y",
            "/é/ssp",
        ] {
            assert_eq!(
                has_ssp(path),
                matches!(apply_ssp(path), Cow::Borrowed(_)),
                "{path}"
            );
        }
    }

    #[test]
    fn ssp_rule_matches_the_contract() {
        let cases = [
            ("/0/rest/S/M", "/0/ssp/rest/S/M"),
            ("/0/odata/Contact", "/0/ssp/odata/Contact"),
            ("/rest/S/M", "/ssp/rest/S/M"),
            ("/0/ssp/rest/S/M", "/0/ssp/rest/S/M"),
            ("/ssp/rest/S/M", "/ssp/rest/S/M"),
            ("/0", "/0/ssp"),
            ("/00/rest", "/ssp/00/rest"),
            ("/0/sspx/y", "/0/ssp/sspx/y"),
            ("/é", "/ssp/é"),
            ("/0é/x", "/ssp/0é/x"),
            ("/0/é", "/0/ssp/é"),
        ];
        for (input, want) in cases {
            let got = apply_ssp(input);
            assert_eq!(got, want, "{input}");
            assert_eq!(
                apply_ssp(&got),
                want,
                "applying twice must not add a second ssp: {input}"
            );
        }
    }

    #[test]
    fn longest_prefix_wins_by_whole_segments_and_ignores_case() {
        let table = RouteTable {
            routes: {
                let mut r = vec![
                    (
                        0,
                        RouteConfig {
                            prefix: "/0/rest".into(),
                            ssp: false,
                            identity: 1,
                            max_body: None,
                        },
                    ),
                    (
                        1,
                        RouteConfig {
                            prefix: "/0/rest/UsrPortalService".into(),
                            ssp: true,
                            identity: 2,
                            max_body: None,
                        },
                    ),
                ];
                r.sort_by_key(|r| std::cmp::Reverse(r.1.prefix.len()));
                r
            },
            default: Some(0),
            max_body: None,
        };
        let d = |p: &str| {
            let p = CanonicalPath::parse(p).expect("canonical");
            table.decide(&p).map(|d| (d.identity, d.ssp))
        };
        assert_eq!(d("/0/rest/UsrPortalService/Get"), Some((2, true)));
        assert_eq!(d("/0/REST/usrportalservice/Get"), Some((2, true)));
        assert_eq!(d("/0/rest/UsrPortalService"), Some((2, true)));
        assert_eq!(d("/0/rest/UsrPortalServiceX/Get"), Some((1, false)));
        // An OData key ends the segment, raw or percent-encoded.
        assert_eq!(d("/0/rest/UsrPortalService(1)"), Some((2, true)));
        assert_eq!(d("/0/rest/UsrPortalService%28'a'%29"), Some((2, true)));
        // Percent-escapes are decoded before matching: no spelling escapes the route.
        assert_eq!(d("/0/rest/UsrPortal%53ervice/GetCases"), Some((2, true)));
        assert_eq!(d("/0/rest//UsrPortalService/GetCases"), Some((2, true)));
        // Nor do the spellings Creatio serves the same service under.
        assert_eq!(d("/0/ssp/rest/UsrPortalService/GetCases"), Some((2, true)));
        assert_eq!(d("/rest/UsrPortalService/GetCases"), Some((2, true)));
        assert_eq!(d("/ssp/rest/UsrPortalService/GetCases"), Some((2, true)));
        assert_eq!(d("/0/odata/Contact"), Some((0, false)));
        let deny = RouteTable {
            routes: table.routes.clone(),
            default: None,
            max_body: None,
        };
        let contact = CanonicalPath::parse("/0/odata/Contact").expect("canonical");
        assert_eq!(deny.decide(&contact), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Prefixes that share segments and differ in case only where the config allows.
        const PREFIXES: [&str; 7] = [
            "/0/rest",
            "/0/rest/UsrPortalService",
            "/0/rest/UsrPortalServiceX",
            "/rest/UsrPortalService/GetCases",
            "/0/odata/Case",
            "/0/ssp/odata/Contact",
            "/0/ssp",
        ];

        fn table() -> RouteTable {
            let mut routes: Vec<(usize, RouteConfig)> = PREFIXES
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        i,
                        RouteConfig {
                            prefix: (*p).into(),
                            ssp: i % 2 == 0,
                            identity: i,
                            max_body: None,
                        },
                    )
                })
                .collect();
            routes.sort_by_key(|r| std::cmp::Reverse(route_key(&r.1.prefix).len()));
            RouteTable {
                routes,
                default: Some(99),
                max_body: None,
            }
        }

        /// A canonical path from the prefixes' own segments and a few others.
        fn canonical() -> impl Strategy<Value = String> {
            let segment = prop_oneof![
                Just("0"),
                Just("rest"),
                Just("odata"),
                Just("Contact"),
                Just("UsrPortalService"),
                Just("UsrPortalServiceX"),
                Just("Case"),
                Just("Case(1)"),
                Just("ssp"),
                Just("GetCases"),
            ];
            prop::collection::vec(segment, 1..6).prop_map(|s| format!("/{}", s.join("/")))
        }

        /// Another spelling of `path`: each character kept, case-flipped or percent-encoded,
        /// each `/` maybe doubled.
        fn respell(path: &str, choices: &[u8]) -> String {
            let mut out = String::new();
            for (c, choice) in path.chars().zip(choices.iter().cycle()) {
                match (c, choice % 4) {
                    ('/', 0) => out.push_str("//"),
                    ('/', _) => out.push('/'),
                    (c, 1) if c.is_ascii_alphabetic() => out.push(if c.is_ascii_uppercase() {
                        c.to_ascii_lowercase()
                    } else {
                        c.to_ascii_uppercase()
                    }),
                    (c, 2) => out.push_str(&format!("%{:02X}", c as u32)),
                    (c, 3) => out.push_str(&format!("%{:02x}", c as u32)),
                    (c, _) => out.push(c),
                }
            }
            out
        }

        /// A canonical path around what the /ssp rule looks at: a leading `0`, `ssp` in any
        /// case, near misses, non-ASCII, the prefixes' own segments, maybe a trailing `/`.
        fn around_ssp() -> impl Strategy<Value = String> {
            let segment = prop_oneof![
                Just("0"),
                Just("00"),
                Just("ssp"),
                Just("SSP"),
                Just("sspx"),
                Just("xssp"),
                Just("rest"),
                Just("odata"),
                Just("UsrPortalService"),
                Just("Contact"),
                Just("Case(1)"),
                Just("é"),
                Just("0é"),
            ];
            (prop::collection::vec(segment, 0..6), any::<bool>()).prop_map(|(s, slash)| {
                let mut path = format!("/{}", s.join("/"));
                if slash && path.len() > 1 {
                    path.push('/');
                }
                path
            })
        }

        /// The number of `ssp` segments in `path`, in any case.
        fn ssp_segments(path: &str) -> usize {
            path.split('/')
                .filter(|s| s.eq_ignore_ascii_case("ssp"))
                .count()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn the_ssp_rule_adds_one_ssp_once_and_never_a_second(path in around_ssp()) {
                let once = apply_ssp(&path);
                prop_assert!(has_ssp(&once), "{} -> {}", path, once);
                prop_assert_eq!(apply_ssp(&once), once.clone(), "a second /ssp");
                let added = usize::from(!has_ssp(&path));
                prop_assert_eq!(ssp_segments(&once), ssp_segments(&path) + added, "{}", path);
                if added == 1 {
                    prop_assert_eq!(remove_ssp(&once), path.as_str());
                }
                prop_assert_eq!(route_key(&once), route_key(&path));
                let parsed = CanonicalPath::parse(&once).expect("the rewritten path parses");
                prop_assert_eq!(parsed.as_str(), once.as_ref(), "still canonical");
            }

            #[test]
            fn a_rewritten_path_never_escapes_its_route(
                path in prop_oneof![canonical(), around_ssp()],
            ) {
                let table = table();
                let canonical = CanonicalPath::parse(&path).expect("canonical");
                let decided = table.decide(&canonical);
                // What is forwarded (/ssp applied) takes the route the client's path took, not
                // a longer or another one; a Location pointing back has the inserted segment
                // taken out, which gives the client's path itself.
                let forwarded = apply_ssp(canonical.as_str());
                let again = CanonicalPath::parse(&forwarded).expect("canonical");
                prop_assert_eq!(table.decide(&again), decided, "{} -> {}", path, forwarded);
                if !has_ssp(canonical.as_str()) {
                    prop_assert_eq!(remove_ssp(&forwarded), canonical.as_str());
                }
            }

            #[test]
            fn every_spelling_of_a_path_takes_its_one_route(
                path in canonical(),
                choices in prop::collection::vec(any::<u8>(), 1..40),
            ) {
                let table = table();
                let canonical = CanonicalPath::parse(&path).expect("canonical");
                let decided = table.decide(&canonical);
                // At most one route matches with the longest prefix.
                let longest = PREFIXES
                    .iter()
                    .filter(|p| starts_with_segments(route_key(canonical.as_str()), route_key(p)))
                    .map(|p| route_key(p).len())
                    .max();
                if let Some(len) = longest {
                    let ties = PREFIXES
                        .iter()
                        .filter(|p| {
                            route_key(p).len() == len
                                && starts_with_segments(route_key(canonical.as_str()), route_key(p))
                        })
                        .count();
                    prop_assert_eq!(ties, 1);
                    prop_assert_eq!(decided.and_then(|d| d.route).map(|r| route_key(PREFIXES[r]).len()), Some(len));
                }
                let spelled = respell(&path, &choices);
                let parsed = CanonicalPath::parse(&spelled).expect("a respelling has a canonical form");
                prop_assert!(parsed.as_str().eq_ignore_ascii_case(canonical.as_str()), "{} -> {}", spelled, parsed);
                prop_assert_eq!(table.decide(&parsed), decided, "{}", spelled);
            }
        }
    }
}
