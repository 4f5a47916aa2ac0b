//! The cookie jar of one Creatio session.
//!
//! Cookies are keyed by (name, path), as RFC 6265 stores them. The login's `Set-Cookie` lines
//! fill the jar ([`Jar::apply`]: a new value replaces the old one, an expired one (`Max-Age=0` or
//! an `Expires` in the past, as ASP.NET clears cookies) removes it). Answers to forwarded
//! requests may only renew what is there, in place ([`Jar::apply_forwarded`]). The jar
//! renders one `Cookie` line with every cookie, longest path first (RFC 6265 §5.4 ordering):
//! Creatio sets its session cookies on `/` or on the application path, which every proxied
//! request is under, so path matching per request is not needed and the line is computed once
//! per change instead of once per request.

use cookie::time::OffsetDateTime;
use cookie::Cookie;
use http::HeaderValue;

/// The name of Creatio's CSRF cookie and header.
pub(crate) const BPMCSRF: &str = "BPMCSRF";

/// The cookie in which Creatio names the logged-in user.
pub(crate) const USER_NAME: &str = "UserName";

/// A set of cookies for one session.
#[derive(Default, Clone)]
pub(crate) struct Jar {
    cookies: Vec<Cookie<'static>>,
}

impl std::fmt::Debug for Jar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values are credentials.
        f.debug_list()
            .entries(self.cookies.iter().map(|c| c.name()))
            .finish()
    }
}

impl Jar {
    /// Applies one `Set-Cookie` header value of the proxy's own login. Returns true when the
    /// jar changed. Unparsable values are ignored (a browser would ignore them too).
    pub(crate) fn apply(&mut self, set_cookie: &HeaderValue) -> bool {
        self.apply_with(set_cookie, false)
    }

    /// Applies one `Set-Cookie` header value of an answer to a forwarded request: a cookie may
    /// only take a new value where the jar already holds that name on that path (a sliding
    /// renewal of what the login set). Nothing is added (a second `.ASPXAUTH` on a longer path
    /// would be sent first and win; a new session cookie could belong to another login) and
    /// nothing is removed (the expiry handling replaces a session that ended).
    pub(crate) fn apply_forwarded(&mut self, set_cookie: &HeaderValue) -> bool {
        self.apply_with(set_cookie, true)
    }

    fn apply_with(&mut self, set_cookie: &HeaderValue, forwarded: bool) -> bool {
        let Ok(text) = set_cookie.to_str() else {
            return false;
        };
        let Ok(cookie) = Cookie::parse(text.to_string()) else {
            return false;
        };
        let guarded = forwarded;
        let path = cookie.path().unwrap_or("/").to_string();
        let position = self
            .cookies
            .iter()
            .position(|c| c.name() == cookie.name() && c.path().unwrap_or("/") == path);
        let expired = cookie
            .max_age()
            .is_some_and(|a| a.is_zero() || a.is_negative())
            || cookie
                .expires_datetime()
                .is_some_and(|at| at <= OffsetDateTime::now_utc());
        if guarded && (position.is_none() || expired) {
            return false;
        }
        match (position, expired) {
            (Some(i), true) => {
                self.cookies.remove(i);
                true
            }
            (None, true) => false,
            (Some(i), false) => {
                if self.cookies[i].value() == cookie.value() {
                    return false;
                }
                self.cookies[i] = cookie;
                true
            }
            (None, false) => {
                self.cookies.push(cookie);
                true
            }
        }
    }

    /// The value of the first cookie called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.value())
    }

    /// True when one of `set_cookies` would give the `UserName` cookie another (non-empty)
    /// value than the one this jar holds: the answer comes from a login as another user, and
    /// must not change the session (see [`crate::stack::session`]). A jar without `UserName`
    /// (an OAuth 2.0 identity, or a Creatio that does not set it) compares as empty, so any
    /// `UserName` then counts as a change.
    pub(crate) fn changes_user<'a>(
        &self,
        set_cookies: impl IntoIterator<Item = &'a HeaderValue>,
    ) -> bool {
        let current = self.get(USER_NAME).unwrap_or("");
        set_cookies.into_iter().any(|value| {
            let Some(cookie) = value.to_str().ok().and_then(|t| Cookie::parse(t).ok()) else {
                return false;
            };
            cookie.name().eq_ignore_ascii_case(USER_NAME)
                && !cookie.value().is_empty()
                && cookie.value() != current
        })
    }

    /// The cookies as `Set-Cookie` lines that [`Jar::apply`] reads back into the same jar
    /// (the session store keeps a jar this way).
    pub(crate) fn set_cookie_lines(&self) -> Vec<String> {
        self.cookies.iter().map(|c| c.to_string()).collect()
    }

    /// Number of cookies.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cookies.len()
    }

    /// The `Cookie` request header for this jar, or `None` when empty.
    pub(crate) fn cookie_header(&self) -> Option<HeaderValue> {
        if self.cookies.is_empty() {
            return None;
        }
        let mut ordered: Vec<&Cookie<'static>> = self.cookies.iter().collect();
        ordered.sort_by_key(|c| std::cmp::Reverse(c.path().unwrap_or("/").len()));
        let mut line = String::new();
        for c in ordered {
            if !line.is_empty() {
                line.push_str("; ");
            }
            line.push_str(c.name());
            line.push('=');
            line.push_str(c.value());
        }
        let mut value = HeaderValue::from_str(&line).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// The `BPMCSRF` request header: the BPMCSRF cookie's value.
    pub(crate) fn csrf_header(&self) -> Option<HeaderValue> {
        let mut value = self
            .get(BPMCSRF)
            .and_then(|v| HeaderValue::from_str(v).ok())?;
        value.set_sensitive(true);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header value")
    }

    #[test]
    fn merges_replaces_and_removes_by_name_and_path() {
        let mut jar = Jar::default();
        assert!(jar.apply(&hv(".ASPXAUTH=one; path=/; HttpOnly")));
        assert!(jar.apply(&hv("BPMCSRF=csrf1; path=/")));
        assert!(jar.apply(&hv("BPMLOADER=ld; path=/app; HttpOnly")));
        assert_eq!(
            jar.cookie_header().expect("line"),
            "BPMLOADER=ld; .ASPXAUTH=one; BPMCSRF=csrf1"
        );
        assert_eq!(jar.csrf_header().expect("csrf"), "csrf1");
        // Credentials print as "Sensitive" in any Debug output.
        assert!(jar.csrf_header().expect("csrf").is_sensitive());
        assert!(jar.cookie_header().expect("line").is_sensitive());
        // sliding renewal replaces the ticket
        assert!(jar.apply(&hv(".ASPXAUTH=two; path=/; HttpOnly")));
        assert!(
            !jar.apply(&hv(".ASPXAUTH=two; path=/; HttpOnly")),
            "same value: no change"
        );
        assert_eq!(jar.get(".ASPXAUTH"), Some("two"));
        // same name on another path is another cookie
        assert!(jar.apply(&hv("BPMCSRF=other; path=/x")));
        assert_eq!(jar.len(), 4);
        // ASP.NET clears a cookie with a date in the past
        assert!(jar.apply(&hv(
            ".ASPXAUTH=; expires=Mon, 11-Oct-1999 00:00:00 GMT; path=/"
        )));
        assert!(jar.apply(&hv("BPMCSRF=x; Max-Age=0; path=/x")));
        assert_eq!(jar.get(".ASPXAUTH"), None);
        assert_eq!(jar.len(), 2);
        assert!(
            !jar.apply(&hv("garbage")),
            "unparsable Set-Cookie is ignored"
        );
    }

    #[test]
    fn answers_to_forwarded_requests_only_renew_the_session_cookies_in_place() {
        let login = |jar: &mut Jar| {
            jar.apply(&hv(".ASPXAUTH=one; path=/; HttpOnly"));
            jar.apply(&hv("BPMCSRF=csrf1; path=/"));
        };
        let cases: &[(&str, bool, &str)] = &[
            (
                ".ASPXAUTH=two; path=/; HttpOnly",
                true,
                ".ASPXAUTH=two; BPMCSRF=csrf1",
            ),
            (
                "BPMCSRF=csrf2; path=/",
                true,
                ".ASPXAUTH=one; BPMCSRF=csrf2",
            ),
            (
                ".ASPXAUTH=evil; path=/0; HttpOnly",
                false,
                ".ASPXAUTH=one; BPMCSRF=csrf1",
            ),
            (
                ".aspxauth=evil; path=/",
                false,
                ".ASPXAUTH=one; BPMCSRF=csrf1",
            ),
            (
                ".ASPXAUTH=; expires=Mon, 11-Oct-1999 00:00:00 GMT; path=/",
                false,
                ".ASPXAUTH=one; BPMCSRF=csrf1",
            ),
            (
                "BPMLOADER=new; path=/",
                false,
                ".ASPXAUTH=one; BPMCSRF=csrf1",
            ),
            (
                "UsrTheme=dark; path=/",
                false,
                ".ASPXAUTH=one; BPMCSRF=csrf1",
            ),
        ];
        for (line, changed, after) in cases {
            let mut jar = Jar::default();
            login(&mut jar);
            assert_eq!(jar.apply_forwarded(&hv(line)), *changed, "{line}");
            assert_eq!(jar.cookie_header().expect("line"), *after, "{line}");
        }
    }

    #[test]
    fn a_user_name_cookie_for_another_user_is_a_change_of_user() {
        let mut jar = Jar::default();
        jar.apply(&hv("UserName=83|117; path=/"));
        let cases: &[(&[&str], bool)] = &[
            (&[".ASPXAUTH=renewed; path=/"], false),
            (&["UserName=83|117; path=/"], false),
            (
                &["UserName=; expires=Mon, 11-Oct-1999 00:00:00 GMT; path=/"],
                false,
            ),
            (&[".ASPXAUTH=x; path=/", "UserName=80|111; path=/"], true),
            (&["username=80|111; path=/"], true),
            (&["garbage"], false),
        ];
        for (lines, want) in cases {
            let values: Vec<HeaderValue> = lines.iter().map(|l| hv(l)).collect();
            assert_eq!(jar.changes_user(&values), *want, "{lines:?}");
        }
        assert!(Jar::default().changes_user(&[hv("UserName=1; path=/")]));
    }

    #[test]
    fn debug_shows_names_not_values() {
        let mut jar = Jar::default();
        jar.apply(&hv(".ASPXAUTH=topsecretticket; path=/"));
        let text = format!("{jar:?}");
        assert!(
            text.contains(".ASPXAUTH") && !text.contains("topsecretticket"),
            "{text}"
        );
    }
}
