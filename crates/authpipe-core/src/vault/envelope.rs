//! Byte formats of everything the vault encrypts, and the associated data (AAD) that binds each
//! ciphertext to the one place it belongs.
//!
//! Record (a secret field of a connection, a secret, or a flow's PKCE verifier), format 2:
//!
//! ```text
//! [0]       format version (2)
//! [1..5]    tenant data-key generation, u32 big-endian
//! [5..13]   write id, 64 random bits: the same in every sealed field of one write of a row
//! [13..25]  96-bit random nonce
//! [25..]    AES-256-GCM ciphertext || 16-byte tag
//! ```
//!
//! The AAD of a record is its header plus (tenant, scope, provider, subject, field), each part
//! length-prefixed so no two different tuples encode alike. A ciphertext copied into another
//! row, field, user or tenant therefore fails authentication. The write id (authenticated as
//! part of the header) ties a connection's fields to one write: every write that seals any field
//! of a row seals all of them anew under one fresh id, and a reader refuses a row whose fields
//! name different ids (`VAULT_INTEGRITY`). So one field cannot be rolled back to an older
//! ciphertext of itself (see `vault` on rollback for why this stands in for the row version).
//!
//! Format 1 (`[1][generation][nonce][ct||tag]`, AAD domain `authpipe.record.v1`) had no write
//! id. It is still opened until the store is marked migrated (`vault` on migration), and then
//! refused, so that nobody can downgrade a field to an old format-1 ciphertext.
//!
//! A wrapped tenant key is `nonce || ciphertext || tag` under a master key, with AAD
//! (tenant, master key id, generation); a key check is the same under (master key id).

use crate::error::{Error, ErrorCode, Result};
use crate::records::Sealed;
use aes_gcm::aead::{Aead, AeadCore, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

pub const RECORD_FORMAT_V1: u8 = 1;
pub const RECORD_FORMAT_V2: u8 = 2;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRITE_ID_LEN: usize = 8;
const V1_HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const RECORD_HEADER_LEN: usize = 1 + 4 + WRITE_ID_LEN + NONCE_LEN;

/// Names one write of a row: every field sealed in it carries the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteId(pub(super) u64);

impl WriteId {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

/// What a record's header says, read without a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub format: u8,
    pub generation: u32,
    /// `None` in format 1.
    pub write: Option<WriteId>,
}

/// Where a sealed value lives. Every part goes into the AAD.
#[derive(Clone, Copy, Debug)]
pub struct RecordPlace<'a> {
    pub tenant: &'a str,
    /// `"connection"` or `"secret"`.
    pub scope: &'a str,
    /// Provider id; empty for tenant-wide secrets.
    pub provider: &'a str,
    /// User id for connections, secret name for secrets.
    pub subject: &'a str,
    /// `"credential"`, `"refresh_token"`, `"extras"` or `"value"`.
    pub field: &'a str,
}

/// Concatenates a domain label and length-prefixed parts.
fn associated_data(domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(domain.len() + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    out.extend_from_slice(domain);
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn record_aad(header: &[u8], place: &RecordPlace<'_>) -> Vec<u8> {
    let domain: &[u8] = if header[0] == RECORD_FORMAT_V1 {
        b"authpipe.record.v1"
    } else {
        b"authpipe.record.v2"
    };
    associated_data(
        domain,
        &[
            header,
            place.tenant.as_bytes(),
            place.scope.as_bytes(),
            place.provider.as_bytes(),
            place.subject.as_bytes(),
            place.field.as_bytes(),
        ],
    )
}

/// Encrypts `plaintext` for `place` under a tenant data key, as part of write `write`.
pub fn seal_record(
    cipher: &Aes256Gcm,
    generation: u32,
    write: WriteId,
    place: &RecordPlace<'_>,
    plaintext: &[u8],
) -> Result<Sealed> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[0] = RECORD_FORMAT_V2;
    header[1..5].copy_from_slice(&generation.to_be_bytes());
    header[5..13].copy_from_slice(&write.0.to_be_bytes());
    header[13..].copy_from_slice(&nonce);
    encrypt_after_header(cipher, &header, &nonce, place, plaintext)
}

/// `header || AES-256-GCM(plaintext)`, the header (which ends with `nonce`) authenticated with
/// the place: the one way a record of either format is sealed.
fn encrypt_after_header(
    cipher: &Aes256Gcm,
    header: &[u8],
    nonce: &aes_gcm::aead::Nonce<Aes256Gcm>,
    place: &RecordPlace<'_>,
    plaintext: &[u8],
) -> Result<Sealed> {
    let aad = record_aad(header, place);
    let ciphertext = cipher
        .encrypt(
            nonce,
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| Error::internal("AES-GCM encryption failed"))?;
    Ok(Sealed([header, &ciphertext].concat()))
}

/// The header of a record (format, generation, write id), read without a key.
pub fn record_header(sealed: &Sealed) -> Result<RecordHeader> {
    let bytes = &sealed.0;
    let header_len = match bytes.first() {
        Some(&RECORD_FORMAT_V1) => V1_HEADER_LEN,
        Some(&RECORD_FORMAT_V2) => RECORD_HEADER_LEN,
        _ => 0,
    };
    if header_len == 0 || bytes.len() < header_len + TAG_LEN {
        return Err(Error::new(
            ErrorCode::VaultIntegrity,
            "a stored ciphertext is truncated or in an unknown format",
        ));
    }
    let generation = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let write = (bytes[0] == RECORD_FORMAT_V2).then(|| {
        WriteId(u64::from_be_bytes(
            bytes[5..13].try_into().expect("eight bytes"),
        ))
    });
    Ok(RecordHeader {
        format: bytes[0],
        generation,
        write,
    })
}

/// The tenant data-key generation a record was sealed with, read from its header.
pub fn record_generation(sealed: &Sealed) -> Result<u32> {
    record_header(sealed).map(|h| h.generation)
}

/// Decrypts a record sealed for `place`. Any change to the bytes, or a different place, fails
/// with `VAULT_INTEGRITY`.
pub fn open_record(
    cipher: &Aes256Gcm,
    place: &RecordPlace<'_>,
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>> {
    let header_len = match record_header(sealed)?.format {
        RECORD_FORMAT_V1 => V1_HEADER_LEN,
        _ => RECORD_HEADER_LEN,
    };
    let (header, ciphertext) = sealed.0.split_at(header_len);
    let aad = record_aad(header, place);
    cipher
        .decrypt(Nonce::from_slice(&header[header_len - NONCE_LEN..]), Payload { msg: ciphertext, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| {
            Error::new(
                ErrorCode::VaultIntegrity,
                format!(
                    "the stored {} of {} {}/{}/{} failed authentication: it was modified, or copied from another row or tenant",
                    place.field, place.scope, place.provider, place.tenant, place.subject
                ),
            )
        })
}

/// A record in format 1, as stores written before format 2 hold them (for migration tests).
#[cfg(test)]
pub fn seal_record_v1(
    cipher: &Aes256Gcm,
    generation: u32,
    place: &RecordPlace<'_>,
    plaintext: &[u8],
) -> Result<Sealed> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let mut header = [0u8; V1_HEADER_LEN];
    header[0] = RECORD_FORMAT_V1;
    header[1..5].copy_from_slice(&generation.to_be_bytes());
    header[5..].copy_from_slice(&nonce);
    encrypt_after_header(cipher, &header, &nonce, place, plaintext)
}

fn tenant_key_aad(tenant: &str, master_key_id: &str, generation: u32) -> Vec<u8> {
    associated_data(
        b"authpipe.tenant-key.v1",
        &[
            tenant.as_bytes(),
            master_key_id.as_bytes(),
            &generation.to_be_bytes(),
        ],
    )
}

fn key_check_aad(master_key_id: &str) -> Vec<u8> {
    associated_data(b"authpipe.key-check.v1", &[master_key_id.as_bytes()])
}

/// A known plaintext: decrypting a key check proves the configured key is the stored one.
const KEY_CHECK_PLAINTEXT: &[u8] = b"authpipe master key check";

fn seal_raw(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Result<Sealed> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::internal("AES-GCM encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(Sealed(out))
}

fn open_raw(cipher: &Aes256Gcm, aad: &[u8], sealed: &Sealed) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.0.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.0.split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

pub fn wrap_tenant_key(
    master: &Aes256Gcm,
    master_key_id: &str,
    tenant: &str,
    generation: u32,
    key: &[u8],
) -> Result<Sealed> {
    seal_raw(
        master,
        &tenant_key_aad(tenant, master_key_id, generation),
        key,
    )
}

/// `None` when the key does not authenticate under this master key and place.
pub fn unwrap_tenant_key(
    master: &Aes256Gcm,
    master_key_id: &str,
    tenant: &str,
    generation: u32,
    wrapped: &Sealed,
) -> Option<Zeroizing<Vec<u8>>> {
    open_raw(
        master,
        &tenant_key_aad(tenant, master_key_id, generation),
        wrapped,
    )
}

pub fn make_key_check(master: &Aes256Gcm, master_key_id: &str) -> Result<Sealed> {
    seal_raw(master, &key_check_aad(master_key_id), KEY_CHECK_PLAINTEXT)
}

pub fn verify_key_check(master: &Aes256Gcm, master_key_id: &str, check: &Sealed) -> bool {
    open_raw(master, &key_check_aad(master_key_id), check)
        .is_some_and(|p| p.as_slice() == KEY_CHECK_PLAINTEXT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::KeyInit;

    fn cipher(byte: u8) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&[byte; 32]).unwrap()
    }

    fn place<'a>(tenant: &'a str, user: &'a str, field: &'a str) -> RecordPlace<'a> {
        RecordPlace {
            tenant,
            scope: "connection",
            provider: "attio",
            subject: user,
            field,
        }
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let c = cipher(1);
        let p = place("org_acme", "u1", "credential");
        let a = seal_record(&c, 7, WriteId(3), &p, b"token").unwrap();
        let b = seal_record(&c, 7, WriteId(3), &p, b"token").unwrap();
        assert_ne!(a, b, "each seal uses a fresh nonce");
        assert_eq!(
            record_header(&a).unwrap(),
            RecordHeader {
                format: RECORD_FORMAT_V2,
                generation: 7,
                write: Some(WriteId(3))
            }
        );
        assert_eq!(open_record(&c, &p, &a).unwrap().as_slice(), b"token");
        assert_eq!(a.0.len(), RECORD_HEADER_LEN + 5 + TAG_LEN);
    }

    #[test]
    fn format_1_records_still_open() {
        let c = cipher(1);
        let p = place("t", "u", "credential");
        let old = seal_record_v1(&c, 4, &p, b"token").unwrap();
        assert_eq!(
            record_header(&old).unwrap(),
            RecordHeader {
                format: RECORD_FORMAT_V1,
                generation: 4,
                write: None
            }
        );
        assert_eq!(open_record(&c, &p, &old).unwrap().as_slice(), b"token");
        // Relabelled as format 2 it is another AAD (and header length): it fails.
        let mut relabelled = old.0.clone();
        relabelled[0] = RECORD_FORMAT_V2;
        assert!(open_record(&c, &p, &Sealed(relabelled)).is_err());
    }

    #[test]
    fn any_other_place_fails() {
        let c = cipher(1);
        let sealed = seal_record(
            &c,
            1,
            WriteId(3),
            &place("t1", "u1", "credential"),
            b"token",
        )
        .unwrap();
        for other in [
            place("t2", "u1", "credential"),
            place("t1", "u2", "credential"),
            place("t1", "u1", "refresh_token"),
        ] {
            let err = open_record(&c, &other, &sealed).unwrap_err();
            assert_eq!(err.code, ErrorCode::VaultIntegrity);
        }
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        let s = seal_record(&c, 1, WriteId(3), &place("ab", "c", "f"), b"x").unwrap();
        assert!(open_record(&c, &place("a", "bc", "f"), &s).is_err());
    }

    #[test]
    fn every_flipped_bit_fails() {
        let c = cipher(1);
        let p = place("t", "u", "credential");
        let sealed = seal_record(&c, 1, WriteId(3), &p, b"some token").unwrap();
        for i in 0..sealed.0.len() * 8 {
            let mut bytes = sealed.0.clone();
            bytes[i / 8] ^= 1 << (i % 8);
            assert!(open_record(&c, &p, &Sealed(bytes)).is_err(), "bit {i}");
        }
        assert!(open_record(&c, &p, &Sealed(sealed.0[..20].to_vec())).is_err());
    }

    #[test]
    fn tenant_keys_and_key_checks_bind_their_context() {
        let m = cipher(9);
        let wrapped = wrap_tenant_key(&m, "k1", "t1", 1, &[5; 32]).unwrap();
        assert_eq!(
            unwrap_tenant_key(&m, "k1", "t1", 1, &wrapped)
                .unwrap()
                .as_slice(),
            &[5; 32]
        );
        assert!(unwrap_tenant_key(&m, "k1", "t2", 1, &wrapped).is_none());
        assert!(unwrap_tenant_key(&m, "k2", "t1", 1, &wrapped).is_none());
        assert!(unwrap_tenant_key(&m, "k1", "t1", 2, &wrapped).is_none());
        assert!(unwrap_tenant_key(&cipher(8), "k1", "t1", 1, &wrapped).is_none());

        let check = make_key_check(&m, "k1").unwrap();
        assert!(verify_key_check(&m, "k1", &check));
        assert!(!verify_key_check(&cipher(8), "k1", &check));
        assert!(!verify_key_check(&m, "k2", &check));
    }
}
