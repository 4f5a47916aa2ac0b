//! Sealing what the session store holds: AES-256-GCM with a fresh random nonce per write,
//! bound to the Redis key and generation it is stored under, and key names that say nothing
//! of the user (HMAC-SHA256). Two subkeys are derived from the configured 32 bytes, one for
//! each use, so the same bytes never serve two algorithms.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The format byte in front of every sealed value.
const FORMAT: u8 = 1;

/// Seals and opens stored values; names keys.
pub(crate) struct Sealer {
    aead: LessSafeKey,
    names: hmac::Key,
    random: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

/// A value that does not open with this key: another replica's key, or corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Undecryptable;

impl Sealer {
    /// A sealer for the configured 32 bytes.
    pub(crate) fn new(key: &[u8; 32]) -> Sealer {
        let master = hmac::Key::new(hmac::HMAC_SHA256, key);
        let derive = |label: &[u8]| hmac::sign(&master, label);
        let aead_key = derive(b"creatio-proxy session store: seal");
        let name_key = derive(b"creatio-proxy session store: names");
        // 32 bytes of HMAC-SHA256 output is exactly an AES-256 key.
        let aead = UnboundKey::new(&AES_256_GCM, aead_key.as_ref())
            .map(LessSafeKey::new)
            .unwrap_or_else(|_| unreachable!("a 32-byte AES-256 key"));
        Sealer {
            aead,
            names: hmac::Key::new(hmac::HMAC_SHA256, name_key.as_ref()),
            random: SystemRandom::new(),
        }
    }

    /// A name for `parts` (the identity's Creatio URL, mode and user) that reveals none of
    /// them: 32 hex digits of their HMAC.
    pub(crate) fn name(&self, parts: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.names);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let tag = ctx.sign();
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Seals `plain` for storage under `key` at `generation`. `None` only when the system
    /// random source fails.
    pub(crate) fn seal(&self, key: &str, generation: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + 16);
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key, generation)),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Opens what [`Sealer::seal`] made for the same `key` and `generation`.
    pub(crate) fn open(
        &self,
        key: &str,
        generation: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>, Undecryptable> {
        let (format, rest) = sealed.split_first().ok_or(Undecryptable)?;
        if *format != FORMAT || rest.len() < NONCE_LEN {
            return Err(Undecryptable);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Undecryptable)?;
        let mut body = body.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(aad(key, generation)), &mut body)
            .map_err(|_| Undecryptable)?;
        Ok(plain.to_vec())
    }
}

/// What a sealed value is bound to: moving it to another key or generation breaks it.
fn aad(key: &str, generation: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key.len() + 9);
    aad.extend_from_slice(key.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&generation.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_name_and_generation() {
        let sealer = Sealer::new(&[7; 32]);
        let plain = b"{\"cookies\":[\".ASPXAUTH=secret-ticket\"]}";
        let sealed = sealer.seal("p:session:ab", 3, plain).expect("sealed");
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains("secret-ticket"), "{text}");
        assert_eq!(
            sealer.open("p:session:ab", 3, &sealed).as_deref(),
            Ok(&plain[..])
        );
        assert_eq!(sealer.open("p:session:ab", 4, &sealed), Err(Undecryptable));
        assert_eq!(sealer.open("p:session:cd", 3, &sealed), Err(Undecryptable));
        assert_eq!(
            Sealer::new(&[8; 32]).open("p:session:ab", 3, &sealed),
            Err(Undecryptable)
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(sealer.open("p:session:ab", 3, &flipped), Err(Undecryptable));
        assert_eq!(sealer.open("p:session:ab", 3, b""), Err(Undecryptable));
        assert_eq!(
            sealer.open("p:session:ab", 3, b"\x01abc"),
            Err(Undecryptable)
        );
        // A fresh nonce per write: the same value seals differently.
        assert_ne!(sealer.seal("p:session:ab", 3, plain), Some(sealed));
    }

    #[test]
    fn names_hide_their_parts_and_depend_on_the_key() {
        let a = Sealer::new(&[1; 32]);
        let name = a.name(&["https://creatio.example", "forms", "Supervisor"]);
        assert_eq!(name.len(), 32);
        assert!(!name.contains("Supervisor"));
        assert_eq!(
            name,
            a.name(&["https://creatio.example", "forms", "Supervisor"])
        );
        assert_ne!(
            name,
            a.name(&["https://creatio.example", "forms", "Supervisor2"])
        );
        // Parts are length-prefixed: moving a boundary changes the name.
        assert_ne!(a.name(&["ab", "c"]), a.name(&["a", "bc"]));
        assert_ne!(
            name,
            Sealer::new(&[2; 32]).name(&["https://creatio.example", "forms", "Supervisor"])
        );
    }
}
