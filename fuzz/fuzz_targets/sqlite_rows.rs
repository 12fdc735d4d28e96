//! SQLite rows as a writer with access to the database file could leave them: any value of any
//! type in any column of any table (as far as the STRICT tables accept it), then every read of
//! the store. Each read returns records or an error; none panics.
#![no_main]

use arbitrary::Arbitrary;
use authpipe_core::store::sqlite::SqliteStore;
use authpipe_core::store::{ListQuery, SecretKey, Store};
use authpipe_core::{ConnectionKey, SecretName, TenantId};
use libfuzzer_sys::fuzz_target;
use rusqlite::types::Value;
use std::sync::{LazyLock, Mutex};

#[derive(Arbitrary, Debug)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<Cell> for Value {
    fn from(cell: Cell) -> Self {
        match cell {
            Cell::Null => Value::Null,
            Cell::Integer(i) => Value::Integer(i),
            Cell::Real(r) => Value::Real(r),
            Cell::Text(s) => Value::Text(s),
            Cell::Blob(b) => Value::Blob(b),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Row {
    /// Which table, by index into the store's own tables.
    table: u8,
    cells: Vec<Cell>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    rows: Vec<Row>,
    now: i64,
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: SqliteStore,
    raw: Mutex<rusqlite::Connection>,
    /// Each table with its columns, read from the schema the store created.
    tables: Vec<(String, Vec<String>)>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    // On tmpfs when there is one: the target rewrites the file on every input.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("authpipe-fuzz-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = SqliteStore::open(&path).expect("the store creates its schema");
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let names: Vec<String> = raw
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let tables = names
        .into_iter()
        .map(|name| {
            let columns: Vec<String> = raw
                .prepare(&format!("SELECT name FROM pragma_table_info('{name}')"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            (name, columns)
        })
        .collect();
    Fixture {
        runtime,
        store,
        raw: Mutex::new(raw),
        tables,
    }
});

fuzz_target!(|input: Input| {
    let f = &*FIXTURE;
    // The engine's clock, not outside input: any moment from 1970 to the year 2248.
    let now = input.now.rem_euclid(1 << 43);
    let raw = f.raw.lock().unwrap();
    for (table, _) in &f.tables {
        raw.execute(&format!("DELETE FROM \"{table}\""), [])
            .unwrap();
    }
    let mut tenants = vec![TenantId::parse("tenant-1").unwrap()];
    let mut keys = vec![ConnectionKey::parse("attio", "tenant-1", "user-1").unwrap()];
    let mut hashes = Vec::new();
    for row in input.rows {
        let (table, columns) = &f.tables[usize::from(row.table) % f.tables.len()];
        let cells: Vec<Value> = row.cells.into_iter().map(Value::from).collect();
        if cells.is_empty() {
            continue;
        }
        // The ids a row names, so that the reads below look for them.
        let text = |name: &str| {
            let at = columns.iter().position(|c| c == name)?;
            match cells.get(at % cells.len()) {
                Some(Value::Text(s)) => Some(s.clone()),
                _ => None,
            }
        };
        if let Some(t) = text("tenant_id") {
            if let Ok(tenant) = TenantId::parse(t.as_str()) {
                tenants.push(tenant);
            }
            if let (Some(p), Some(u)) = (text("provider"), text("user_id")) {
                if let Ok(key) = ConnectionKey::parse(&p, &t, &u) {
                    keys.push(key);
                }
            }
        }
        hashes.extend(text("state_hash"));
        hashes.extend(text("token_hash"));
        let placeholders = vec!["?"; columns.len()].join(", ");
        let quoted: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
        let sql = format!(
            "INSERT OR REPLACE INTO \"{table}\" ({}) VALUES ({placeholders})",
            quoted.join(", ")
        );
        let values: Vec<&Value> = (0..columns.len())
            .map(|i| &cells[i % cells.len()])
            .collect();
        // A row the schema refuses (a STRICT type, a NOT NULL, a CHECK) never reaches a read.
        let _ = raw.execute(&sql, rusqlite::params_from_iter(values));
    }
    drop(raw);
    f.runtime.block_on(async {
        let _ = f.store.master_keys().await;
        let _ = f.store.tenant_keys().await;
        for tenant in &tenants {
            let _ = f.store.tenant_key(tenant).await;
            let _ = f.store.deleted_generation(tenant).await;
            let _ = f
                .store
                .secret(&SecretKey {
                    tenant: tenant.clone(),
                    provider: None,
                    name: SecretName::parse("webhook").unwrap(),
                })
                .await;
        }
        let _ = f.store.all_connections().await;
        let _ = f
            .store
            .list_connections(&ListQuery {
                tenant: None,
                provider: None,
                status: None,
                after: None,
                limit: 100,
            })
            .await;
        let _ = f.store.connections(&keys).await;
        for key in &keys {
            let _ = f.store.connection(key).await;
        }
        for hash in &hashes {
            let _ = f.store.session(hash).await;
            let _ = f.store.take_session(hash).await;
            let _ = f.store.take_flow(hash, None, now).await;
        }
        let _ = f.store.prune_ended(now).await;
    });
});
