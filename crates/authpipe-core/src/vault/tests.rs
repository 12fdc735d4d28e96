//! The vault's unit tests: keyring reconciliation, tenant keys and their generations, sealing,
//! rotation's older keys, the write id and the format-1 migration.

use super::*;

fn vault(ids: &[&str]) -> (Vault, Vec<secrecy::SecretString>) {
    let (keys, secrets): (Vec<_>, Vec<_>) = ids
        .iter()
        .map(|id| MasterKey::generate(Some(id)).unwrap())
        .unzip();
    (Vault::new(Keyring::new(keys).unwrap()), secrets)
}

fn place(tenant: &str) -> RecordPlace<'_> {
    RecordPlace {
        tenant,
        scope: "connection",
        provider: "attio",
        subject: "u",
        field: "credential",
    }
}

#[test]
fn tenant_keys_isolate_tenants() {
    let (v, _) = vault(&["k1"]);
    let t1 = TenantId::parse("t1").unwrap();
    let t2 = TenantId::parse("t2").unwrap();
    let k1 = v.unwrap(&v.new_tenant_key(&t1, None, 0).unwrap()).unwrap();
    let k2 = v.unwrap(&v.new_tenant_key(&t2, None, 0).unwrap()).unwrap();
    let sealed = v
        .seal(&k1, WriteId::random(), &place("t1"), b"tok")
        .unwrap();
    assert_eq!(
        v.open(&k1, &place("t1"), &sealed).unwrap().as_slice(),
        b"tok"
    );
    // Even with the AAD of t1, t2's key cannot open it.
    assert_eq!(
        v.open(&k2, &place("t1"), &sealed).unwrap_err().code,
        ErrorCode::VaultIntegrity
    );
}

#[test]
fn rewrap_moves_tenant_keys_to_the_primary_and_keeps_them_usable() {
    let (old_vault, secrets) = vault(&["old"]);
    let t = TenantId::parse("t").unwrap();
    let record = old_vault.new_tenant_key(&t, None, 0).unwrap();
    let sealed = old_vault
        .seal(
            &old_vault.unwrap(&record).unwrap(),
            WriteId::random(),
            &place("t"),
            b"tok",
        )
        .unwrap();

    let (new_key, _) = MasterKey::generate(Some("new")).unwrap();
    let old_key = MasterKey::parse(Some("old"), &secrets[0], "k").unwrap();
    let rotated = Vault::new(Keyring::new(vec![new_key, old_key]).unwrap());
    let rewrapped = rotated.rewrap(&record).unwrap().expect("needs rewrapping");
    assert_eq!(rewrapped.master_key_id, "new");
    assert!(rotated.rewrap(&rewrapped).unwrap().is_none());
    rotated.retire("old").unwrap();
    rotated.forget(&t);
    let key = rotated.unwrap(&rewrapped).unwrap();
    assert_eq!(
        rotated.open(&key, &place("t"), &sealed).unwrap().as_slice(),
        b"tok"
    );
    rotated.forget(&t);
    assert_eq!(
        rotated.unwrap(&record).unwrap_err().code,
        ErrorCode::VaultKeyMismatch,
        "old key retired"
    );
}

#[test]
fn reconcile_catches_wrong_missing_and_retired_keys() {
    let (v, _) = vault(&["k1"]);
    let fresh = v.reconcile(&[], &BTreeSet::new(), 5).unwrap();
    assert_eq!(fresh.len(), 1);
    assert!(v
        .reconcile(&fresh, &BTreeSet::from(["k1".to_owned()]), 6)
        .unwrap()
        .is_empty());

    let (impostor, _) = vault(&["k1"]);
    let err = impostor.reconcile(&fresh, &BTreeSet::new(), 6).unwrap_err();
    assert_eq!(err.code, ErrorCode::VaultKeyMismatch);
    assert!(
        err.message.contains("key material differs"),
        "{}",
        err.message
    );

    let (other, _) = vault(&["k2"]);
    let err = other
        .reconcile(&fresh, &BTreeSet::from(["k1".to_owned()]), 6)
        .unwrap_err();
    assert!(
        err.message.contains("'k1'") && err.message.contains("configured: 'k2'"),
        "{}",
        err.message
    );
    let err = other.reconcile(&fresh, &BTreeSet::new(), 6).unwrap_err();
    assert!(
        err.message.contains("none of which is configured"),
        "{}",
        err.message
    );

    let retired = vec![MasterKeyRecord {
        retired_at: Some(1),
        ..fresh[0].clone()
    }];
    assert!(v
        .reconcile(&retired, &BTreeSet::new(), 6)
        .unwrap_err()
        .message
        .contains("was retired"));
}

#[test]
fn a_retired_key_configured_to_unwrap_is_accepted_and_wraps_nothing() {
    let (_, k1_secret) = MasterKey::generate(None).unwrap();
    let (_, k2_secret) = MasterKey::generate(None).unwrap();
    let keys = |retired: bool| {
        let k2 = MasterKey::parse(Some("k2"), &k2_secret, "k").unwrap();
        let k1 = MasterKey::parse(Some("k1"), &k1_secret, "k").unwrap();
        let ring = if retired {
            Keyring::with_retired(vec![k2], vec![k1])
        } else {
            Keyring::new(vec![k2, k1])
        };
        Vault::new(ring.unwrap())
    };
    // The store as another instance left it: k1 retired, yet still wrapping a tenant key.
    let stored: Vec<MasterKeyRecord> = keys(false)
        .reconcile(&[], &BTreeSet::new(), 1)
        .unwrap()
        .into_iter()
        .map(|check| MasterKeyRecord {
            retired_at: (check.id == "k1").then_some(2),
            ..check
        })
        .collect();
    let wrapping = BTreeSet::from(["k1".to_owned(), "k2".to_owned()]);

    let repair = keys(true);
    assert!(repair.reconcile(&stored, &wrapping, 6).unwrap().is_empty());
    assert_eq!(repair.primary_key_id(), "k2");
    assert_eq!(
        keys(true)
            .reconcile(&[], &BTreeSet::new(), 6)
            .unwrap()
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["k2"],
        "no key check is made for a key configured retired"
    );
    // Configured as an active key instead, it is refused, with the way out.
    let err = keys(false).reconcile(&stored, &wrapping, 6).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("retired: true"), "{}", err.message);
}

#[test]
fn a_tenant_created_again_gets_the_next_generation() {
    let (v, _) = vault(&["k1"]);
    let t = TenantId::parse("t").unwrap();
    let first = v.new_tenant_key(&t, None, 0).unwrap();
    assert_eq!(first.generation, FIRST_GENERATION);
    let again = v.new_tenant_key(&t, Some(first.generation), 0).unwrap();
    assert_eq!(again.generation, FIRST_GENERATION + 1);
    let old_key = v.unwrap(&first).unwrap();
    let sealed = v
        .seal(&old_key, WriteId::random(), &place("t"), b"tok")
        .unwrap();
    assert_eq!(sealed_generation(&sealed).unwrap(), FIRST_GENERATION);
    let new_key = v.unwrap(&again).unwrap();
    assert_eq!(
        v.open(&new_key, &place("t"), &sealed).unwrap_err().code,
        ErrorCode::VaultKeyMissing,
        "sealed with the destroyed key"
    );
    assert!(v.new_tenant_key(&t, Some(u32::MAX), 0).is_err());
}

#[test]
fn older_keys_open_their_records_beside_the_current_one() {
    let (v, _) = vault(&["k1"]);
    let t = TenantId::parse("t").unwrap();
    let first = v.new_tenant_key(&t, None, 0).unwrap();
    let old_key = v.unwrap(&first).unwrap();
    let sealed = v
        .seal(&old_key, WriteId::random(), &place("t"), b"tok")
        .unwrap();
    let second = v.new_tenant_key(&t, Some(first.generation), 0).unwrap();
    let new_key = v.unwrap(&second).unwrap();
    assert_eq!(v.cached(&t).unwrap().generation(), second.generation);
    let older = v.cached_generation(&t, first.generation).unwrap();
    assert_eq!(
        v.open(&older, &place("t"), &sealed).unwrap().as_slice(),
        b"tok"
    );
    v.forget_older(&t, first.generation);
    assert!(v.cached_generation(&t, first.generation).is_none());
    assert_eq!(
        v.unwrap_older(&first).unwrap().generation(),
        first.generation,
        "read again from its record"
    );
    assert!(v.cached_generation(&t, first.generation).is_some());
    assert_eq!(v.cached(&t).unwrap().generation(), new_key.generation());
}

#[test]
fn fields_of_two_writes_and_refused_format_1_fail_integrity() {
    let (v, _) = vault(&["k1"]);
    let t = TenantId::parse("t").unwrap();
    let key = v.unwrap(&v.new_tenant_key(&t, None, 0).unwrap()).unwrap();
    let (w1, w2) = (WriteId::random(), WriteId::random());
    let a = v.seal(&key, w1, &place("t"), b"a").unwrap();
    let b = v.seal(&key, w1, &place("t"), b"b").unwrap();
    let c = v.seal(&key, w2, &place("t"), b"c").unwrap();
    assert!(check_one_write(String::new, [&a, &b]).is_ok());
    assert_eq!(
        check_one_write(|| "x".into(), [&a, &c]).unwrap_err().code,
        ErrorCode::VaultIntegrity
    );
    let old = envelope::seal_record_v1(&key.cipher, key.generation, &place("t"), b"v1").unwrap();
    assert_eq!(
        check_one_write(String::new, [&old, &a]).unwrap_err().code,
        ErrorCode::VaultIntegrity,
        "format 1 mixed with format 2"
    );
    assert_eq!(v.open(&key, &place("t"), &old).unwrap().as_slice(), b"v1");
    v.refuse_format_1();
    assert_eq!(
        v.open(&key, &place("t"), &old).unwrap_err().code,
        ErrorCode::VaultIntegrity
    );
    assert_eq!(v.open(&key, &place("t"), &a).unwrap().as_slice(), b"a");
}
