//! Recognising Creatio's "your session is gone" answers.
//!
//! Creatio says it in three ways (reference §4), and all three mean "log in again":
//! 1. a redirect (301/302/303/307/308) whose `Location` is a `/Login/` page
//!    (`/Login/NuiLogin.aspx?ReturnUrl=...` on .NET Framework, `/Login/Login.html` on .NET Core);
//! 2. a 401 (`.svc` services answer `{"Message":"Authentication failed."}`; a missing BPMCSRF
//!    is assumed to answer 401 as well);
//! 3. a 200 `text/html` answer whose first 4 KB is the login page itself (what a client sees
//!    when something followed the redirect): markers `NuiLogin.aspx`, `IndexForm`,
//!    `bootstrap.login`, `AuthService.svc/Login`.
//!
//! A login redirect and a 401 are given before Creatio runs the request, which is what makes
//! replaying a POST after a re-login safe. No other status is ever treated as expiry.

use http::{header, HeaderMap, StatusCode};

/// How much of an HTML answer is searched for login-page markers.
pub(crate) const LOGIN_PAGE_SCAN: usize = 4096;

/// The verdict on an answer's status and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A normal answer: pass it on.
    Pass,
    /// The session expired.
    Expired,
    /// An HTML 200: its first bytes decide ([`is_login_page`]).
    Inspect,
}

/// Classifies an answer by status and headers alone.
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap) -> Verdict {
    match status.as_u16() {
        401 => Verdict::Expired,
        301 | 302 | 303 | 307 | 308 => {
            let to_login = headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(is_login_location);
            if to_login {
                Verdict::Expired
            } else {
                Verdict::Pass
            }
        }
        200 => {
            if is_html(headers) {
                Verdict::Inspect
            } else {
                Verdict::Pass
            }
        }
        _ => Verdict::Pass,
    }
}

/// True when the `Content-Type` is `text/html` (any case, any parameters).
pub(crate) fn is_html(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"text/html"))
    })
}

/// True when a `Location` points at one of Creatio's login pages under `/Login/`
/// (`NuiLogin.aspx`, `Login.html`, the portal's `SspLogin.aspx`), absolute or relative, any
/// case. Another page that merely lives under a `Login` folder is not an expiry: replaying a
/// request after such a redirect could run it twice.
pub(crate) fn is_login_location(location: &str) -> bool {
    const PAGES: [&str; 3] = [
        "/login/nuilogin.aspx",
        "/login/login.html",
        "/login/ssplogin.aspx",
    ];
    let path = location.split(['?', '#']).next().unwrap_or("");
    let lower = path.to_ascii_lowercase();
    PAGES.iter().any(|p| lower.ends_with(p))
}

/// True when the start of an HTML body is Creatio's login page.
pub(crate) fn is_login_page(head: &[u8]) -> bool {
    login_page_markers(head) >= 1
}

/// How many of the login page's markers the start of an HTML body holds. Creatio's page holds
/// several (the `IndexForm` form posting to `NuiLogin.aspx`, the `AuthService.svc/Login` URL in
/// its script, the `bootstrap.login` loader); a page of a custom service that merely mentions
/// one of them holds one.
pub(crate) fn login_page_markers(head: &[u8]) -> usize {
    const MARKERS: [&[u8]; 4] = [
        b"nuilogin.aspx",
        b"indexform",
        b"bootstrap.login",
        b"authservice.svc/login",
    ];
    let head = &head[..head.len().min(LOGIN_PAGE_SCAN)];
    MARKERS.iter().filter(|m| contains_ci(head, m)).count()
}

/// True when the start of a 403 is Creatio's "Access to non-SSP API is denied for portal
/// users" (reference, Addendum).
pub(crate) fn is_non_ssp_refusal(head: &[u8]) -> bool {
    contains_ci(head, b"non-ssp api")
}

/// ASCII case-insensitive search. `needle` is one of this module's non-empty constants
/// (`windows(0)` would panic).
fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn classifies_every_flavour_of_expiry() {
        struct Case {
            name: &'static str,
            status: u16,
            headers: HeaderMap,
            want: Verdict,
        }
        let cases = [
            Case {
                name: "netfw 302",
                status: 302,
                headers: headers(&[("location", "/Login/NuiLogin.aspx?ReturnUrl=%2f0%2fodata")]),
                want: Verdict::Expired,
            },
            Case {
                name: "netcore 302",
                status: 302,
                headers: headers(&[(
                    "location",
                    "https://h/app/Login/Login.html?ReturnUrl=%2fapp%2f",
                )]),
                want: Verdict::Expired,
            },
            Case {
                name: "307 lower case",
                status: 307,
                headers: headers(&[("location", "/login/nuilogin.aspx")]),
                want: Verdict::Expired,
            },
            Case {
                name: "301 login",
                status: 301,
                headers: headers(&[("location", "/0/Login/NuiLogin.aspx")]),
                want: Verdict::Expired,
            },
            Case {
                name: "302 elsewhere",
                status: 302,
                headers: headers(&[("location", "/0/Nui/ViewModule.aspx")]),
                want: Verdict::Pass,
            },
            Case {
                name: "302 login only in query",
                status: 302,
                headers: headers(&[("location", "/x?next=/Login/")]),
                want: Verdict::Pass,
            },
            Case {
                name: "303 to a page in a Login folder",
                status: 303,
                headers: headers(&[("location", "/0/rest/Login/Done")]),
                want: Verdict::Pass,
            },
            Case {
                name: "portal login page",
                status: 302,
                headers: headers(&[("location", "/Login/SspLogin.aspx?ReturnUrl=%2fx")]),
                want: Verdict::Expired,
            },
            Case {
                name: "401",
                status: 401,
                headers: HeaderMap::new(),
                want: Verdict::Expired,
            },
            Case {
                name: "403 portal",
                status: 403,
                headers: headers(&[("content-type", "text/html")]),
                want: Verdict::Pass,
            },
            Case {
                name: "200 html",
                status: 200,
                headers: headers(&[("content-type", "text/html; charset=utf-8")]),
                want: Verdict::Inspect,
            },
            Case {
                name: "200 json",
                status: 200,
                headers: headers(&[("content-type", "application/json")]),
                want: Verdict::Pass,
            },
            Case {
                name: "500",
                status: 500,
                headers: HeaderMap::new(),
                want: Verdict::Pass,
            },
        ];
        for c in cases {
            let got = classify(StatusCode::from_u16(c.status).expect("status"), &c.headers);
            assert_eq!(got, c.want, "{}", c.name);
        }
    }

    #[test]
    fn finds_login_pages_and_nothing_else() {
        assert!(is_login_page(br#"<form name="IndexForm" method="post" action="./NuiLogin.aspx?ReturnUrl=%2fconnect%2ftoken" id="IndexForm">"#));
        assert!(is_login_page(br#"<script src="/core/hash/Terrasoft/amd/bootstrap-loader.js" data-loadbootstrap="bootstrap.login">"#));
        assert!(!is_login_page(b"<html><body><h1>Report</h1></body></html>"));
        let mut late = vec![b' '; LOGIN_PAGE_SCAN];
        late.extend_from_slice(b"NuiLogin.aspx");
        assert!(
            !is_login_page(&late),
            "markers past the first 4 KB do not count"
        );
    }
}
