//! The master keyring: the keys that wrap tenant data keys. The first key wraps new and
//! rewrapped tenant keys; every key can unwrap.

use crate::error::{Error, Result};
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

/// Length of every key in the vault: AES-256.
pub const KEY_BYTES: usize = 32;

/// A master key as configured: an optional id and the encoded key material.
pub struct MasterKeyConfig {
    pub id: Option<String>,
    pub key: SecretString,
}

/// One master key, ready to use. Its `Debug` shows the id only.
pub struct MasterKey {
    id: String,
    fingerprint: [u8; 32],
    pub(super) cipher: Aes256Gcm,
}

impl MasterKey {
    /// Parses key material encoded as base64 (standard or URL-safe, padded or not) or hex.
    /// `id` defaults to a fingerprint of the key, so one configured key needs no name.
    pub fn parse(id: Option<&str>, encoded: &SecretString, field: &str) -> Result<Self> {
        let bytes = decode_key(encoded.expose_secret()).ok_or_else(|| {
            Error::invalid_argument(format!(
                "{field} must be {KEY_BYTES} random bytes encoded as base64 (44 characters) or hex \
                 (64 characters); generate one with: node -e \"console.log(require('crypto').randomBytes(32).toString('base64'))\""
            ))
        })?;
        let fingerprint = fingerprint(&bytes);
        let id = match id {
            Some(id) => {
                check_key_id(id, field)?;
                id.to_owned()
            }
            None => default_key_id(&fingerprint),
        };
        let cipher =
            Aes256Gcm::new_from_slice(&bytes[..]).map_err(|_| Error::internal("AES key length"))?;
        Ok(Self {
            id,
            fingerprint,
            cipher,
        })
    }

    /// A fresh random key (development default, tests).
    pub fn generate(id: Option<&str>) -> Result<(Self, SecretString)> {
        let bytes: Zeroizing<[u8; KEY_BYTES]> = Zeroizing::new(rand::random());
        let encoded = SecretString::from(STANDARD.encode(&bytes[..]));
        Ok((Self::parse(id, &encoded, "masterKey")?, encoded))
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn decode_key(encoded: &str) -> Option<Zeroizing<Vec<u8>>> {
    let trimmed = encoded.trim();
    let decoded =
        if trimmed.len() == KEY_BYTES * 2 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
            decode_hex(trimmed)
        } else {
            [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(trimmed).ok())
        }?;
    let decoded = Zeroizing::new(decoded);
    (decoded.len() == KEY_BYTES).then_some(decoded)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn check_key_id(id: &str, field: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "{field} id must be 1-64 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

/// HMAC of a fixed label under the key: identifies the key without revealing anything usable.
fn fingerprint(key: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"authpipe master key fingerprint v1");
    mac.finalize().into_bytes().into()
}

fn default_key_id(fingerprint: &[u8; 32]) -> String {
    let hex: String = fingerprint[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("k-{hex}")
}

/// The configured master keys, primary first.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl Keyring {
    /// Builds a keyring; rejects an empty list, duplicate ids and the same key under two ids.
    pub fn new(keys: Vec<MasterKey>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::invalid_argument(
                "masterKeys must contain at least one key",
            ));
        }
        for (i, key) in keys.iter().enumerate() {
            for other in &keys[..i] {
                if other.id == key.id {
                    return Err(Error::invalid_argument(format!(
                        "masterKeys has two keys with id '{}'",
                        key.id
                    )));
                }
                if other.fingerprint == key.fingerprint {
                    return Err(Error::invalid_argument(format!(
                        "masterKeys has the same key material under ids '{}' and '{}'",
                        other.id, key.id
                    )));
                }
            }
        }
        Ok(Self { keys })
    }

    /// Parses configured keys (`masterKeys`, or one `masterKey`).
    pub fn from_config(configs: &[MasterKeyConfig]) -> Result<Self> {
        let keys = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let field = if configs.len() == 1 && c.id.is_none() {
                    "masterKey".to_owned()
                } else {
                    format!("masterKeys[{i}].key")
                };
                MasterKey::parse(c.id.as_deref(), &c.key, &field)
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(keys)
    }

    /// The key that wraps new tenant keys.
    pub fn primary(&self) -> &MasterKey {
        &self.keys[0]
    }

    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// Forgets a key (after `retireMasterKey`). The primary cannot be removed.
    pub fn remove(&mut self, id: &str) -> Result<()> {
        match self.keys.iter().position(|k| k.id == id) {
            Some(0) => Err(Error::invalid_argument(format!(
                "master key '{id}' is the primary key; put the new key first in masterKeys before retiring this one"
            ))),
            Some(i) => {
                self.keys.remove(i);
                Ok(())
            }
            None => Err(Error::invalid_argument(format!("no master key with id '{id}' is configured"))),
        }
    }

    /// Whether two keyrings hold the same keys in the same order (instances sharing a store
    /// in one process must agree, or one of them would write what the other cannot read).
    pub fn same_keys(&self, other: &Keyring) -> bool {
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| a.id == b.id && a.fingerprint == b.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    const B64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // "0123456789abcdef" x2

    /// Compiles only while the AES key schedule behind every master and tenant key is wiped on
    /// drop (`aes`'s `zeroize` feature; `aes-gcm`'s own feature covers only its GHASH state).
    #[test]
    fn aes_key_schedules_are_zeroized_on_drop() {
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroized_on_drop::<aes::Aes256>();
    }

    #[test]
    fn parses_every_encoding_of_the_same_key_to_the_same_id() {
        let hex = "3031323334353637383961626364656630313233343536373839616263646566";
        let ids: Vec<String> = [B64, B64.trim_end_matches('='), hex]
            .iter()
            .map(|e| {
                MasterKey::parse(None, &secret(e), "masterKey")
                    .unwrap()
                    .id()
                    .to_owned()
            })
            .collect();
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
        assert!(ids[0].starts_with("k-"));
    }

    #[test]
    fn rejects_wrong_lengths_without_echoing_the_value() {
        for bad in ["", "short", "MDEyMzQ1Njc4OWFiY2RlZg==", &"ab".repeat(33)] {
            let err = MasterKey::parse(None, &secret(bad), "masterKey").unwrap_err();
            assert!(
                err.message.starts_with("masterKey must be 32 random bytes"),
                "{}",
                err.message
            );
            if !bad.is_empty() {
                assert!(!err.message.contains(bad));
            }
        }
    }

    #[test]
    fn debug_shows_the_id_only() {
        let key = MasterKey::parse(Some("2026-11"), &secret(B64), "masterKey").unwrap();
        assert_eq!(format!("{key:?}"), "MasterKey { id: \"2026-11\", .. }");
    }

    #[test]
    fn keyring_rules() {
        let (a, _) = MasterKey::generate(Some("a")).unwrap();
        let (a2, _) = MasterKey::generate(Some("a")).unwrap();
        assert!(Keyring::new(vec![a, a2])
            .unwrap_err()
            .message
            .contains("two keys with id 'a'"));
        let same1 = MasterKey::parse(Some("x"), &secret(B64), "k").unwrap();
        let same2 = MasterKey::parse(Some("y"), &secret(B64), "k").unwrap();
        assert!(Keyring::new(vec![same1, same2])
            .unwrap_err()
            .message
            .contains("same key material"));
        assert!(Keyring::new(vec![]).is_err());

        let (p, _) = MasterKey::generate(Some("new")).unwrap();
        let (o, _) = MasterKey::generate(Some("old")).unwrap();
        let mut ring = Keyring::new(vec![p, o]).unwrap();
        assert!(ring.remove("new").unwrap_err().message.contains("primary"));
        ring.remove("old").unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["new"]);
    }
}
