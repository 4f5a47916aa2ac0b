//! Pure helpers for URL paths and ASP.NET wire formats, with no I/O or state.
//!
//! Paths match case-insensitively, as IIS does. Encodings follow what ASP.NET emits
//! (`HttpUtility.UrlEncode` for `ReturnUrl`), not RFC 3986's preferences.

use std::time::SystemTime;

/// Why IIS refuses a path before the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CookedPathError {
    /// HTTP.sys: a `%` not followed by two hex digits (400).
    BadEscape,
    /// Request filtering, `allowDoubleEscaping = false`: the path still holds a `%` once
    /// decoded (404.11).
    DoubleEscape,
}

/// The path as IIS hands it to the application (reference, addendum of 2026-12-03): every
/// percent-escape decoded (`%2F` becomes a real `/`), `\` read as `/`. Bytes that are not
/// UTF-8 are replaced (the application sees a string). The result is spelled so that an
/// `http::Uri` can carry it: bytes a URI path cannot hold stay percent-encoded, and the rest,
/// letters and `/` included, appear decoded, which is what routing sees.
pub(super) fn cooked_path(raw: &str) -> Result<String, CookedPathError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                    return Err(CookedPathError::BadEscape);
                };
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'\\' => {
                decoded.push(b'/');
                i += 1;
            }
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    if decoded.contains(&b'%') {
        return Err(CookedPathError::DoubleEscape);
    }
    let text = String::from_utf8_lossy(&decoded);
    let trailing = text.ends_with('/');
    let mut kept: Vec<&str> = Vec::new();
    for (i, segment) in text.split('/').enumerate() {
        let cookieless = segment.len() > 4
            && segment.starts_with('(')
            && segment.ends_with("))")
            && segment.as_bytes()[1].is_ascii_alphabetic()
            && segment.as_bytes()[2] == b'(';
        if i == 0 || cookieless {
            continue;
        }
        kept.push(segment.trim_end_matches(['.', ' ']));
    }
    let mut text = format!("/{}", kept.join("/"));
    if trailing && !text.ends_with('/') {
        text.push('/');
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

/// The path below `base` (`""` or `/Dir`), matched case-insensitively as IIS does.
pub(super) fn strip_base<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    if base.is_empty() {
        return Some(path);
    }
    let head = path.get(..base.len())?;
    let rest = &path[base.len()..];
    (head.eq_ignore_ascii_case(base) && (rest.is_empty() || rest.starts_with('/'))).then_some(rest)
}

/// If `path` is `/<segment>` or `/<segment>/...` (any case), the rest: `""` or `/...`.
pub(super) fn strip_segment<'a>(path: &'a str, segment: &str) -> Option<&'a str> {
    let after_slash = path.strip_prefix('/')?;
    let head = after_slash.get(..segment.len())?;
    let rest = &after_slash[segment.len()..];
    (head.eq_ignore_ascii_case(segment) && (rest.is_empty() || rest.starts_with('/')))
        .then_some(rest)
}

pub(super) fn strip_suffix_ci<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = text.len().checked_sub(suffix.len())?;
    let tail = text.get(cut..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| &text[..cut])
}

/// The non-empty `/`-separated segments of `path`.
pub(super) fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// `Contact` → (`Contact`, None). `Contact(<id>)` or `Contact('<id>')` → (`Contact`, Some(id)).
pub(super) fn parse_resource(segment: &str) -> Option<(&str, Option<&str>)> {
    let Some(open) = segment.find('(') else {
        return Some((segment, None));
    };
    let key = segment[open + 1..].strip_suffix(')')?;
    let key = key.trim_matches('\'');
    let entity = &segment[..open];
    (!entity.is_empty() && !key.is_empty()).then_some((entity, Some(key)))
}

/// `HttpUtility.UrlEncode` as ASP.NET uses it for `ReturnUrl`. Hex digits are lower case
/// (`%2f`), a space becomes `+`, and only alphanumerics and `-_.!*()` stay as they are.
pub(super) fn aspnet_url_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(text.len() * 3);
    for &b in text.as_bytes() {
        match b {
            b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'*'
            | b'('
            | b')' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    out
}

/// An RFC 7231 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), for cookie `expires`.
pub(super) fn http_date(time: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Days since 1970-01-01 to a civil date: Howard Hinnant's algorithm, with eras of 400
    // years that start on 1 March.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {hour:02}:{minute:02}:{second:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
    )
}
