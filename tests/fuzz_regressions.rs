//! The fuzz targets' inputs, replayed by `cargo test`: every committed seed (fuzz/seeds) goes
//! through its target's entry point in `creatio_proxy::fuzzing`, which panics when an
//! invariant breaks, and every crash the fuzzer found is a test of its own below, with the
//! input written out. See docs/testing.md, "Fuzzing".
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

use std::path::Path;

use creatio_proxy::fuzzing;

/// Runs every seed of `target` through `run`, naming the seed when it panics.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a seed").path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "{target}: only {} seeds", seeds.len());
    for seed in seeds {
        let data = std::fs::read(&seed).expect("a readable seed");
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            eprintln!("{target}: the seed {} broke an invariant", seed.display());
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn the_seeds_of_every_target_keep_their_invariants() {
    replay("canonical_path", fuzzing::canonical_path);
    replay("route_table", fuzzing::route_table);
    replay("cookie_jar", fuzzing::cookie_jar);
    replay("login_answer", fuzzing::login_answer);
    replay("token_answer", fuzzing::token_answer);
    replay("config", fuzzing::config);
}

#[test]
fn the_request_head_seeds_keep_the_proxy_serving_and_the_sessions_on_their_routes() {
    replay("request_head", fuzzing::request_head);
}

#[test]
fn the_answer_seeds_never_desynchronise_the_proxys_client_from_creatio() {
    replay("answer", fuzzing::answer);
}

/// Found by `login_answer` in its first 60 s run: a success whose body holds bytes that are not
/// UTF-8 inside a string of a field the parser skips (`"Messag~e":"\xff\xff\xff\xe3"`). serde
/// skips such a field without checking its bytes, so the login is accepted on its `Code` 0 and
/// `.ASPXAUTH`, as it should be; the target's own check read the body strictly and took the
/// answer for one without a `Code`. The check now reads it as leniently as the parser.
#[test]
fn a_login_answer_with_bytes_that_are_not_utf8_in_a_skipped_field_is_judged_on_its_code() {
    let mut answer = b"200\nContent-Type: application/json; charset=utf-8\n\
        Set-Cookie: .ASPXAUTH=7p; path=/\nSet-Cookie: BPMCSRF=kTgk; path=/\n\n\
        {\"Code\":0,\"Messag~e\":\""
        .to_vec();
    answer.extend_from_slice(b"\xff\xff\xff\xe3\",\"PasswordChangeUrl\":null}");
    fuzzing::login_answer(&answer);
}

/// Found by `config` in the second 60 s run: `unmatched = "deny"` with no `[[routes]]` (and no
/// identity at all) was accepted, so `check` passed a proxy that refuses every request. It is
/// refused now, naming `server.unmatched`.
#[test]
fn a_config_that_serves_no_path_is_refused() {
    for toml in [
        "[server]\nunmatched = \"deny\"\n[creatio]\nurl = \"https://mss\"\n",
        "[server]\nunmatched = \"deny\"\n[creatio]\nurl = \"https://mss\"\n\
         [auth]\nusername = \"u\"\npassword = \"p\"\n",
    ] {
        let e = creatio_proxy::config::Config::from_toml_str(toml)
            .expect_err("a config that serves nothing");
        assert!(
            e.to_string().starts_with("server.unmatched: "),
            "{toml}: {e}"
        );
        fuzzing::config(toml.as_bytes());
    }
}
