//! `creatio-proxy check`: the config is valid and every identity can log in.
//!
//! Uses the same config loader, client and login code as `run`. Prints one line per identity
//! and returns non-zero when any identity fails.

use crate::config::Config;
use crate::proxy::Shared;
use crate::upstream::build_upstream;

/// Runs the check; returns the exit code.
pub async fn check(config: &Config) -> i32 {
    let client = match build_upstream(config) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL  config: {e}");
            return 1;
        }
    };
    println!(
        "config OK: Creatio at {}, {} identit{}, {} route(s)",
        config.creatio.display,
        config.identities.len(),
        if config.identities.len() == 1 {
            "y"
        } else {
            "ies"
        },
        config.routes.len()
    );
    let shared = Shared::new(config, client);
    let mut failed = 0;
    for identity in &shared.identities {
        match identity.renew(shared.login_context(), None).await {
            Ok(_) => println!(
                "OK    {} (user {}): logged in",
                identity.name(),
                identity.username()
            ),
            Err(e) => {
                failed += 1;
                println!(
                    "FAIL  {} (user {}): {e}",
                    identity.name(),
                    identity.username()
                );
            }
        }
    }
    if failed == 0 {
        0
    } else {
        1
    }
}
