//! The rules of ARCHITECTURE.md that a compiler does not check: no import circles between
//! modules, the emulator imports nothing from the proxy, and no source file outside the
//! emulator grows past 800 lines. Read from the source files themselves.
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path (`crate::stack::route`) and the text of its file, without its test module
/// and comments.
fn modules() -> BTreeMap<String, (PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = match parts.as_slice() {
                [one] if one == "lib" || one == "main" => "crate".to_string(),
                _ => format!("crate::{}", parts.join("::")),
            };
            let text = std::fs::read_to_string(&path).expect("readable");
            out.insert(name, (path, code_of(&text)));
        }
    }
    out
}

/// The text without `#[cfg(test)] mod ... { }` (a module's tests come last) and `//` comments.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.contains('{'))
        {
            break;
        }
        let line = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Every `crate::`/`super::`/`self::` path in `code`, with `{a, b}` groups expanded one level.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':')
            {
                continue;
            }
            let mut segs = vec![start.trim_end_matches(':').to_string()];
            let mut i = from;
            loop {
                let ident: String = code[i..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !ident.is_empty() {
                    segs.push(ident.clone());
                    i += ident.len();
                    if code[i..].starts_with("::") {
                        i += 2;
                        continue;
                    }
                    break;
                }
                if code[i..].starts_with('{') {
                    let end = code[i..].find('}').map_or(code.len(), |e| i + e);
                    for item in code[i + 1..end].split(',') {
                        let first: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !first.is_empty() {
                            let mut s = segs.clone();
                            s.push(first);
                            out.push(s);
                        }
                    }
                }
                break;
            }
            out.push(segs);
        }
    }
    out
}

/// The longest known module a path names, resolved from module `current`.
fn resolve(
    current: &str,
    segs: &[String],
    known: &BTreeMap<String, (PathBuf, String)>,
) -> Option<String> {
    let mut base: Vec<String> = current.split("::").map(str::to_string).collect();
    let mut rest = segs;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base = vec!["crate".to_string()];
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        _ => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
    }
    let mut best = known
        .contains_key(&base.join("::"))
        .then(|| base.join("::"));
    for seg in rest {
        base.push(seg.clone());
        let name = base.join("::");
        if known.contains_key(&name) {
            best = Some(name);
        } else {
            break;
        }
    }
    best
}

/// Which modules each module uses (a parent uses the children it names as `child::`).
fn graph(known: &BTreeMap<String, (PathBuf, String)>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (name, (_, code)) in known {
        let mut deps = BTreeSet::new();
        for segs in paths_in(code) {
            if let Some(target) = resolve(name, &segs, known) {
                if target != *name {
                    deps.insert(target);
                }
            }
        }
        for line in code.lines() {
            let line = line.trim_start();
            let decl = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .or_else(|| line.strip_prefix("mod "));
            let Some(child) = decl.and_then(|d| d.strip_suffix(';')) else {
                continue;
            };
            let child_name = format!("{name}::{child}");
            let used = code.match_indices(&format!("{child}::")).any(|(at, _)| {
                at == 0
                    || !code.as_bytes()[at - 1].is_ascii_alphanumeric()
                        && code.as_bytes()[at - 1] != b'_'
                        && code.as_bytes()[at - 1] != b':'
            });
            if used && known.contains_key(&child_name) {
                deps.insert(child_name);
            }
        }
        edges.insert(name.clone(), deps);
    }
    edges
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let known = modules();
    let edges = graph(&known);
    assert!(
        edges["crate::stack"].contains("crate::stack::route"),
        "the graph sees parent → child"
    );
    assert!(
        edges["crate::stack::route"].contains("crate::canonical"),
        "the graph sees crate:: paths"
    );
    let mut circles = Vec::new();
    for start in edges.keys() {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if next == start {
                    circles.push(format!("{} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_emulator_imports_nothing_from_the_proxy() {
    let known = modules();
    for (name, (path, code)) in &known {
        if !name.starts_with("crate::emulator") {
            continue;
        }
        for segs in paths_in(code) {
            if segs.first().is_some_and(|s| s == "crate") {
                assert!(
                    segs.get(1).is_some_and(|s| s == "emulator"),
                    "{} uses crate::{}",
                    path.display(),
                    segs[1..].join("::")
                );
            }
        }
    }
}

#[test]
fn no_source_file_outside_the_emulator_is_over_800_lines() {
    for (name, (path, _)) in modules() {
        if name.starts_with("crate::emulator") {
            continue;
        }
        let lines = std::fs::read_to_string(&path)
            .expect("readable")
            .lines()
            .count();
        assert!(lines <= 800, "{} has {lines} lines", path.display());
    }
}
