//! The statement builder: placeholders numbered as values are bound, in both styles.

use super::*;
use crate::records::ConnectionStatus;

#[test]
fn placeholders_are_numbered_as_values_are_bound() {
    let query = ListQuery {
        tenant: Some(TenantId::parse("t").unwrap()),
        status: Some(ConnectionStatus::Active),
        after: Some(ConnectionKey::parse("attio", "t", "u").unwrap()),
        limit: 5,
        ..ListQuery::default()
    };
    let sqlite = list_connections(Placeholders::Sqlite, &query);
    assert!(sqlite.sql.ends_with(
        "WHERE tenant_id = ?1 AND status = ?2 AND (tenant_id, provider, user_id) > (?3, ?4, ?5) \
         ORDER BY tenant_id, provider, user_id LIMIT ?6"
    ), "{}", sqlite.sql);
    assert_eq!(sqlite.values.len(), 6);
    assert_eq!(sqlite.values[5], SqlValue::Int(5));
    let postgres = list_connections(
        Placeholders::Postgres,
        &ListQuery {
            limit: 1,
            ..ListQuery::default()
        },
    );
    assert!(
        postgres
            .sql
            .ends_with("connections  ORDER BY tenant_id, provider, user_id LIMIT $1"),
        "{}",
        postgres.sql
    );
}

#[test]
fn an_update_replaces_what_an_upsert_replaces_and_checks_the_key() {
    let mut sealed = vec![1, 0, 0, 0, 1];
    sealed.resize(40, 0);
    let r = crate::cache::tests::record("u", 3, &sealed);
    let upsert = upsert_connection(Placeholders::Postgres, &r).unwrap();
    // Every column but `version` (a literal 1) is bound.
    assert_eq!(upsert.values.len(), ConnectionColumn::ALL.len() - 1);
    assert!(upsert.sql.contains("$19, 1, $20)"), "{}", upsert.sql);
    assert!(
        !upsert.sql.contains("created_at = excluded"),
        "{}",
        upsert.sql
    );
    let update = update_connection(Placeholders::Postgres, &r, 3, 1).unwrap();
    // 16 replaced columns, the key, the tenant again, the version and the generation.
    assert_eq!(update.values.len(), 16 + 3 + 3);
    assert!(!update.sql.contains("created_at"), "{}", update.sql);
    assert!(
        update
            .sql
            .contains("tenant_id = $17 AND provider = $18 AND user_id = $19 AND version = $21"),
        "{}",
        update.sql
    );
    assert_eq!(update.values[20], SqlValue::Int(3));
    assert_eq!(update.values[21], SqlValue::Int(1));
}
