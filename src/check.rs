//! `creatio-proxy check`: the config is valid and every identity can log in.
//!
//! Uses the same config loader, client and login code as `run`. Prints one line per identity
//! and returns non-zero when any identity fails.

use crate::config::Config;
use crate::state::Shared;
use crate::upstream::build_upstream;

/// Runs the check; returns the exit code.
pub(crate) async fn check(config: &Config) -> i32 {
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
    // The check logs in itself, so that it tests the credentials: it never takes a session
    // from the store. It does check that the store answers.
    let mut failed = 0;
    if let Some(store) = &config.session_store {
        match crate::store::Store::ping(store).await {
            Ok(()) => println!("OK    session store {}: answers", store.display),
            Err(e) => {
                failed += 1;
                println!("FAIL  session store {}: {e}", store.display);
            }
        }
    }
    let shared = Shared::new(config, client);
    for identity in shared.identities.iter() {
        match identity.renew(&shared.login, None).await {
            Ok(session) => match session.expires_in() {
                None => println!(
                    "OK    {} ({}): logged in",
                    identity.name(),
                    identity.principal()
                ),
                Some(left) => println!(
                    "OK    {} ({}): got a token, usable for {} s",
                    identity.name(),
                    identity.principal(),
                    left.as_secs()
                ),
            },
            Err(e) => {
                failed += 1;
                let diagnosis = match &e {
                    crate::error::ProxyError::LoginFailed { failure, .. } => {
                        failure.diagnosis.code()
                    }
                    _ => e.code(),
                };
                println!(
                    "FAIL  {} ({}): [{diagnosis}] {e}",
                    identity.name(),
                    identity.principal()
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
