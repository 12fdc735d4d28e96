//! Opening an engine: where the store is, which master keys to use, and sharing one engine
//! among all instances that open the same store in this process (worker threads included,
//! since they share the process's native statics).

use super::{Engine, KeyRotationPolicy};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorCode, Result};
use crate::store::postgres::tls::PostgresTls;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::{canonical_path, SqliteStore};
use crate::store::Store;
use crate::vault::{Keyring, MasterKey, MasterKeyConfig, Vault};
use secrecy::SecretString;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};

/// Where the store lives.
#[derive(Clone, Debug)]
pub enum StoreLocation {
    /// An SQLite file (created if missing).
    File(PathBuf),
    /// A private in-memory SQLite database: for tests; never shared, gone on close.
    Memory,
    /// A PostgreSQL database, its tables in `schema` (created if missing).
    Postgres {
        /// The connection URL without the `schema` and TLS parameters; it may hold a password.
        url: SecretString,
        schema: String,
        /// `sslmode` and `sslrootcert`, taken off the URL.
        tls: PostgresTls,
    },
}

/// Longest store file path.
const MAX_STORE_PATH_BYTES: usize = 4096;

impl StoreLocation {
    /// The default embedded store, relative to the working directory.
    pub const DEFAULT_PATH: &'static str = ".authpipe/authpipe.db";
    /// The schema of a PostgreSQL store whose URL names none.
    pub const DEFAULT_SCHEMA: &'static str = "authpipe";

    /// Parses the `store` option: `":memory:"`, a file path, `sqlite:<path>`, or
    /// `postgres://user:password@host:port/database?schema=name` (with libpq's `sslmode` and
    /// `sslrootcert`, see [`PostgresTls::split_url`]).
    pub fn parse(value: &str) -> Result<Self> {
        Self::parse_or_default(Some(value))
    }

    /// [`StoreLocation::parse`], with [`StoreLocation::DEFAULT_PATH`] when `store` is not given.
    pub fn parse_or_default(value: Option<&str>) -> Result<Self> {
        let value = value.unwrap_or(Self::DEFAULT_PATH).trim();
        if value == ":memory:" || value == "sqlite::memory:" {
            return Ok(Self::Memory);
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            return Self::parse_postgres(value);
        }
        let path = value.strip_prefix("sqlite:").unwrap_or(value);
        if path.is_empty() || path.contains('\0') {
            return Err(Error::invalid_argument(
                "store must be a file path, \"sqlite:<path>\" or \":memory:\"",
            ));
        }
        // Longer than any OS opens (Linux's PATH_MAX): refused here, before the open error
        // would echo the whole path.
        if path.len() > MAX_STORE_PATH_BYTES {
            return Err(Error::invalid_argument(format!(
                "store is a path of {} bytes; the limit is {MAX_STORE_PATH_BYTES}",
                path.len()
            )));
        }
        Ok(Self::File(PathBuf::from(path)))
    }

    fn parse_postgres(value: &str) -> Result<Self> {
        // Never echo the URL: it may carry a password.
        let invalid = || Error::invalid_argument("store is not a valid postgres:// URL");
        let mut url = url::Url::parse(value).map_err(|_| invalid())?;
        let mut schema = Self::DEFAULT_SCHEMA.to_owned();
        let others: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| {
                if k == "schema" {
                    schema = v.into_owned();
                    None
                } else {
                    Some((k.into_owned(), v.into_owned()))
                }
            })
            .collect();
        if others.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(others);
        }
        crate::store::postgres::check_schema(&schema)?;
        let (url, tls) = PostgresTls::split_url(url.as_str())?;
        Ok(Self::Postgres { url, schema, tls })
    }

    /// The key under which a process shares one engine for this store.
    fn shared_key(&self) -> Option<String> {
        use secrecy::ExposeSecret;
        match self {
            Self::Memory => None,
            Self::File(path) => Some(format!("sqlite:{}", canonical_path(path).display())),
            // The TLS setting too: a store opened without TLS is not shared with one that asks for it.
            Self::Postgres { url, schema, tls } => {
                Some(format!("{}#{schema}#{tls:?}", url.expose_secret()))
            }
        }
    }
}

/// Where the master keys come from.
pub enum MasterKeySource {
    /// Keys from configuration (`masterKey`, `masterKeys` or `AUTHPIPE_MASTER_KEY`), primary first.
    Configured(Vec<MasterKeyConfig>),
    /// No key configured. Outside production a development key is generated and kept in a
    /// 0600 file next to the store; in production this is an error.
    Development { production: bool },
}

pub struct EngineOptions {
    pub store: StoreLocation,
    pub keys: MasterKeySource,
    /// Time source; the system clock unless a test brings its own.
    pub clock: Option<Arc<dyn Clock>>,
    /// When tenant data keys are rotated on their own.
    pub key_rotation: KeyRotationPolicy,
}

/// Tells the caller a development key is in use, so it can say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevKeyNotice {
    /// The key file; `None` for an in-memory store (the key lives as long as the process).
    pub path: Option<PathBuf>,
    /// Whether this open created the key.
    pub created: bool,
}

pub struct Opened {
    pub engine: Arc<Engine>,
    pub dev_key: Option<DevKeyNotice>,
}

static ENGINES: LazyLock<tokio::sync::Mutex<HashMap<String, Weak<Engine>>>> =
    LazyLock::new(Default::default);
static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);

/// Checks options without opening anything: store location and configured key material.
/// (What needs the store, such as whether the keys match it, is checked when opening.)
pub fn check_options(options: &EngineOptions) -> Result<()> {
    if let MasterKeySource::Configured(configs) = &options.keys {
        Keyring::from_config(configs)?;
    }
    Ok(())
}

/// Opens the engine for `options.store`, or joins the one this process already has open for
/// it. Instances sharing an engine must configure the same master keys.
pub async fn open_shared(options: EngineOptions) -> Result<Opened> {
    let clock = options.clock.unwrap_or_else(|| Arc::new(SystemClock));
    let (keyring, dev_key) = resolve_keys(&options.keys, &options.store)?;
    let id = || NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed);
    let Some(shared_key) = options.store.shared_key() else {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory()?);
        let engine = Engine::new(
            id(),
            store,
            Vault::new(keyring),
            clock,
            options.key_rotation,
        )
        .await?;
        return Ok(Opened { engine, dev_key });
    };

    let mut engines = ENGINES.lock().await;
    if let Some(engine) = engines.get(&shared_key).and_then(Weak::upgrade) {
        if !engine.vault.same_keys(&keyring) {
            return Err(Error::invalid_argument(format!(
                "another Authpipe instance in this process has {} open with different master keys; \
                 instances that share a store must be configured with the same keys",
                engine.store.describe()
            )));
        }
        if engine.key_rotation_policy() != options.key_rotation {
            return Err(Error::invalid_argument(format!(
                "another Authpipe instance in this process has {} open with a different tenantKeyRotation; \
                 instances that share a store must configure the same rotation policy",
                engine.store.describe()
            )));
        }
        return Ok(Opened { engine, dev_key });
    }
    engines.retain(|_, engine| engine.strong_count() > 0);
    let store: Arc<dyn Store> = match &options.store {
        StoreLocation::Postgres { url, schema, tls } => {
            use secrecy::ExposeSecret;
            Arc::new(PostgresStore::connect_with_tls(url.expose_secret(), schema, tls).await?)
        }
        StoreLocation::File(path) => {
            let path = canonical_path(path);
            Arc::new(
                tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                    .await
                    .map_err(|e| Error::internal(format!("opening the store failed: {e}")))??,
            )
        }
        StoreLocation::Memory => unreachable!("an in-memory store is never shared"),
    };
    let engine = Engine::new(
        id(),
        store,
        Vault::new(keyring),
        clock,
        options.key_rotation,
    )
    .await?;
    engines.insert(shared_key, Arc::downgrade(&engine));
    Ok(Opened { engine, dev_key })
}

/// An engine of its own on `store`, outside this process's registry: what another process
/// sharing the store would have. For tests that run several "processes" in one.
#[doc(hidden)]
pub async fn open_unshared(
    store: Arc<dyn Store>,
    keys: &[MasterKeyConfig],
    clock: Option<Arc<dyn Clock>>,
) -> Result<Arc<Engine>> {
    let vault = Vault::new(Keyring::from_config(keys)?);
    let clock = clock.unwrap_or_else(|| Arc::new(SystemClock));
    Engine::new(
        NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
        store,
        vault,
        clock,
        KeyRotationPolicy::default(),
    )
    .await
}

fn resolve_keys(
    source: &MasterKeySource,
    store: &StoreLocation,
) -> Result<(Keyring, Option<DevKeyNotice>)> {
    match source {
        MasterKeySource::Configured(configs) => Ok((Keyring::from_config(configs)?, None)),
        MasterKeySource::Development { production: true } => Err(Error::invalid_argument(
            "masterKey is required in production: set masterKey or masterKeys, or the AUTHPIPE_MASTER_KEY \
             environment variable (NODE_ENV is \"production\", so no development key is generated)",
        )),
        MasterKeySource::Development { production: false } => match store {
            StoreLocation::Memory => {
                let (key, _) = MasterKey::generate(None)?;
                Ok((Keyring::new(vec![key])?, Some(DevKeyNotice { path: None, created: true })))
            }
            StoreLocation::Postgres { .. } => Err(Error::invalid_argument(
                "a PostgreSQL store needs masterKey or masterKeys (or AUTHPIPE_MASTER_KEY): every \
                 instance sharing the database must use the same keys, so none is generated",
            )),
            StoreLocation::File(db) => {
                let path = dev_key_path(db);
                let (encoded, created) = load_or_create_dev_key(&path)?;
                let key = MasterKey::parse(None, &encoded, "the development key file")?;
                Ok((Keyring::new(vec![key])?, Some(DevKeyNotice { path: Some(path), created })))
            }
        },
    }
}

/// `<store file>.key`, beside the store.
pub fn dev_key_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".key");
    db.with_file_name(name)
}

/// Reads the key file, or creates it atomically (0600) with a fresh key. Two processes
/// starting at once agree on one key: the file appears complete or not at all.
fn load_or_create_dev_key(path: &Path) -> Result<(SecretString, bool)> {
    let io = |what: &str, e: std::io::Error| {
        Error::new(
            ErrorCode::StoreError,
            format!(
                "cannot {what} the development key file {}: {e}",
                path.display()
            ),
        )
    };
    let read = || {
        std::fs::read_to_string(path)
            .map(SecretString::from)
            .map_err(|e| io("read", e))
    };
    if path.exists() {
        return Ok((read()?, false));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("create the directory of", e))?;
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    }
    let (_, encoded) = MasterKey::generate(None)?;
    let tmp = path.with_extension(format!(
        "tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(|e| io("create", e))?;
        use secrecy::ExposeSecret;
        file.write_all(format!("{}\n", encoded.expose_secret()).as_bytes())
            .map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("write", e))?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok((encoded, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((read()?, false)),
        Err(e) => Err(io("create", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::tls::SslMode;
    use secrecy::ExposeSecret;

    #[test]
    fn postgres_urls_keep_schema_and_tls_beside_the_url() {
        let location = StoreLocation::parse(
            "postgres://u:pw@db.internal/app?schema=tenant_a&sslmode=verify-full&connect_timeout=5",
        )
        .unwrap();
        let StoreLocation::Postgres { url, schema, tls } = &location else {
            panic!("not PostgreSQL");
        };
        assert_eq!(
            url.expose_secret(),
            "postgres://u:pw@db.internal/app?connect_timeout=5"
        );
        assert_eq!(schema, "tenant_a");
        assert_eq!(tls.mode(), SslMode::VerifyFull);
        assert!(!format!("{location:?}").contains("pw"));
    }

    #[test]
    fn a_store_path_longer_than_any_os_opens_is_refused_without_echoing_it() {
        let long = "a".repeat(MAX_STORE_PATH_BYTES + 1);
        let err = StoreLocation::parse(&long).unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::InvalidArgument);
        assert!(err.message.len() < 100, "{}", err.message);
        assert!(StoreLocation::parse(&long[1..]).is_ok());
    }

    #[test]
    fn stores_that_differ_in_tls_are_not_shared() {
        let key = |url: &str| StoreLocation::parse(url).unwrap().shared_key().unwrap();
        let base = "postgres://u@localhost/app";
        assert_ne!(key(base), key(&format!("{base}?sslmode=disable")));
        assert_ne!(
            key(&format!("{base}?sslmode=verify-full")),
            key(&format!("{base}?sslmode=verify-full&sslrootcert=/ca.pem"))
        );
        assert_eq!(key(base), key(&format!("{base}?sslmode=prefer")));
    }
}
