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

/// A master key as configured: an optional id, the encoded key material, and whether it is
/// retired.
pub struct MasterKeyConfig {
    pub id: Option<String>,
    pub key: SecretString,
    /// Unwrap only: a key another instance retired while tenant keys were still wrapped with it
    /// (a store left so by an older version). Such a key is never primary and wraps nothing;
    /// configured after the current primary, it lets `rotateMasterKey()` rewrap those tenant
    /// keys, after which it is removed from the configuration.
    pub retired: bool,
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

pub(crate) fn check_key_id(id: &str, field: &str) -> Result<()> {
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

/// The configured master keys. Every key unwraps; only the primary wraps (new tenant keys, and
/// tenant keys rewrapped by a rotation).
#[derive(Debug)]
pub struct Keyring {
    /// Never empty: the primary first, then older keys kept to unwrap until a rotation is done.
    active: Vec<MasterKey>,
    /// Configured `retired`: unwrap only, accepted although the store marks them retired.
    retired: Vec<MasterKey>,
}

impl Keyring {
    /// Builds a keyring of active keys, primary first; rejects an empty list, duplicate ids and
    /// the same key under two ids.
    pub fn new(keys: Vec<MasterKey>) -> Result<Self> {
        Self::with_retired(keys, Vec::new())
    }

    /// [`Keyring::new`] with unwrap-only keys besides (see [`MasterKeyConfig::retired`]).
    pub fn with_retired(active: Vec<MasterKey>, retired: Vec<MasterKey>) -> Result<Self> {
        if active.is_empty() {
            return Err(Error::invalid_argument(if retired.is_empty() {
                "masterKeys must contain at least one key"
            } else {
                "masterKeys has only retired keys: the first key wraps new tenant keys, so put the current key first"
            }));
        }
        let all: Vec<&MasterKey> = active.iter().chain(&retired).collect();
        for (i, key) in all.iter().enumerate() {
            for other in &all[..i] {
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
        Ok(Self { active, retired })
    }

    /// Parses configured keys (`masterKeys`, or one `masterKey`).
    pub fn from_config(configs: &[MasterKeyConfig]) -> Result<Self> {
        if configs.first().is_some_and(|c| c.retired) {
            return Err(Error::invalid_argument(
                "masterKeys[0] is marked retired, but the first key is the primary, which wraps new tenant keys: \
                 put the current key first and the retired one after it",
            ));
        }
        let (mut active, mut retired) = (Vec::new(), Vec::new());
        for (i, c) in configs.iter().enumerate() {
            let field = if configs.len() == 1 && c.id.is_none() {
                "masterKey".to_owned()
            } else {
                format!("masterKeys[{i}].key")
            };
            let key = MasterKey::parse(c.id.as_deref(), &c.key, &field)?;
            if c.retired {
                retired.push(key);
            } else {
                active.push(key);
            }
        }
        Self::with_retired(active, retired)
    }

    /// The key that wraps new tenant keys.
    pub fn primary(&self) -> &MasterKey {
        &self.active[0]
    }

    /// Any configured key, for unwrapping.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.active.iter().chain(&self.retired).find(|k| k.id == id)
    }

    /// Whether `id` is configured as retired (unwrap only).
    pub fn is_retired(&self, id: &str) -> bool {
        self.retired.iter().any(|k| k.id == id)
    }

    /// Every configured id, active keys first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.active
            .iter()
            .chain(&self.retired)
            .map(|k| k.id.as_str())
    }

    /// The ids of the active keys, primary first.
    pub fn active_ids(&self) -> impl Iterator<Item = &str> {
        self.active.iter().map(|k| k.id.as_str())
    }

    /// Forgets a key (after `retireMasterKey`). The primary cannot be removed.
    pub fn remove(&mut self, id: &str) -> Result<()> {
        if self.primary().id == id {
            return Err(Error::invalid_argument(format!(
                "master key '{id}' is the primary key; put the new key first in masterKeys before retiring this one"
            )));
        }
        let before = self.active.len() + self.retired.len();
        self.active.retain(|k| k.id != id);
        self.retired.retain(|k| k.id != id);
        if self.active.len() + self.retired.len() == before {
            return Err(Error::invalid_argument(format!(
                "no master key with id '{id}' is configured"
            )));
        }
        Ok(())
    }

    /// Whether two keyrings hold the same keys in the same roles and order (instances sharing
    /// a store in one process must agree, or one of them would write what the other cannot read).
    pub fn same_keys(&self, other: &Keyring) -> bool {
        let same = |a: &[MasterKey], b: &[MasterKey]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(a, b)| a.id == b.id && a.fingerprint == b.fingerprint)
        };
        same(&self.active, &other.active) && same(&self.retired, &other.retired)
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

    #[test]
    fn a_retired_key_only_unwraps_and_is_never_primary() {
        let config = |id: &str, retired| MasterKeyConfig {
            id: Some(id.to_owned()),
            key: MasterKey::generate(None).unwrap().1,
            retired,
        };
        let ring = Keyring::from_config(&[config("k2", false), config("k1", true)]).unwrap();
        assert_eq!(ring.primary().id(), "k2");
        assert!(ring.get("k1").is_some() && ring.is_retired("k1") && !ring.is_retired("k2"));
        assert_eq!(ring.active_ids().collect::<Vec<_>>(), ["k2"]);
        for first_retired in [
            vec![config("k1", true), config("k2", false)],
            vec![config("k1", true)],
        ] {
            let err = Keyring::from_config(&first_retired).unwrap_err();
            assert_eq!(err.code, crate::ErrorCode::InvalidArgument);
            assert!(
                err.message.contains("put the current key first"),
                "{}",
                err.message
            );
        }
    }
}
