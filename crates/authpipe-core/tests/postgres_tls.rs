//! The PostgreSQL store over TLS, against real servers:
//! - the machine's PostgreSQL (`AUTHPIPE_TEST_POSTGRES`, default
//!   postgres://postgres@127.0.0.1:5432/test, with `ssl = on`): `require`, `disable` and the
//!   loopback default;
//! - a throwaway PostgreSQL started here with a certificate from a CA made for the test:
//!   `verify-full`, `verify-ca`, `require`, SCRAM channel binding, then `prefer` and `require`
//!   once it is restarted with `ssl = off`.
//!
//! Which of a store's connections use TLS is read from `pg_stat_ssl`, found by the store's own
//! `application_name`. Without a server (or, for the throwaway one, without initdb, or as a user
//! other than root or postgres) a test is skipped with a warning, except under CI, where it fails.

use authpipe_core::store::postgres::PostgresStore;
use authpipe_core::store::{ChangeFeed, Store};
use authpipe_core::{Error, ErrorCode};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tokio_postgres::NoTls;

/// In every URL given to a store, to show that no message repeats it.
const PASSWORD: &str = "hunter2-never-printed";

fn skip_or_fail(test: &str, why: impl std::fmt::Display) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} must run under CI: {why}");
    }
    // Straight to stderr: the harness captures eprintln! of a passing test.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// `base` with more query parameters.
fn with_params(base: &str, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(base).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.into()
}

/// Connects a store as `application_name = app`, opens its change feed (the listener's own
/// connection), and returns the store and feed with what `pg_stat_ssl` says of each of their
/// connections.
async fn open_store(
    observer: &tokio_postgres::Client,
    url: &str,
    schema: &str,
    app: &str,
) -> Result<(PostgresStore, ChangeFeed, Vec<bool>), Error> {
    let store = PostgresStore::connect(url, schema).await?;
    let feed = store.watch().await?.expect("PostgreSQL has a change feed");
    let ssl = observer
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok((store, feed, ssl))
}

/// Connects, and asserts that the pool's and the listener's connections are both encrypted or
/// both plaintext, as `expect_tls` says.
async fn assert_connects(
    observer: &tokio_postgres::Client,
    url: &str,
    schema: &str,
    expect_tls: bool,
    what: &str,
) {
    let app = unique("tls_test");
    let url = with_params(url, &[("application_name", &app)]);
    let (_store, _feed, ssl) = open_store(observer, &url, schema, &app)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        ssl,
        [expect_tls, expect_tls],
        "{what}: the pooled connection and the listener's, TLS {expect_tls}"
    );
}

/// Asserts that connecting fails as a TLS failure under `sslmode`, for the reason `cause`.
async fn assert_tls_fails(url: &str, schema: &str, sslmode: &str, cause: &str, what: &str) {
    let e = PostgresStore::connect(url, schema)
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: connected"));
    assert_eq!(e.code, ErrorCode::StoreError, "{what}: {e}");
    assert!(
        e.message
            .starts_with(&format!("PostgreSQL: TLS failed (sslmode={sslmode})")),
        "{what}: {e}"
    );
    assert!(e.message.contains(cause), "{what}: {e}");
    assert!(!e.message.contains(PASSWORD), "{what}: {e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn machine_server_require_and_disable() {
    let test = "PostgreSQL TLS against the machine's server";
    let base = std::env::var("AUTHPIPE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let observer = match tokio_postgres::connect(&base, NoTls).await {
        Ok((client, driver)) => {
            tokio::spawn(driver);
            client
        }
        Err(e) => return skip_or_fail(test, e),
    };
    let ssl: String = observer.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" {
        return skip_or_fail(test, "the server has ssl = off");
    }
    let schema = unique("authpipe_tls");
    let with = |sslmode| with_params(&base, &[("sslmode", sslmode)]);
    assert_connects(&observer, &with("require"), &schema, true, "require").await;
    assert_connects(&observer, &with("disable"), &schema, false, "disable").await;
    assert_connects(
        &observer,
        &base,
        &schema,
        true,
        "no sslmode: prefer on loopback, and the server offers TLS",
    )
    .await;
    observer
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// The test's certificates: a CA, a server certificate it issued for `localhost` and
/// `127.0.0.1`, and an unrelated CA.
struct Certificates {
    ca: String,
    other_ca: String,
    server_cert: String,
    server_key: String,
}

impl Certificates {
    fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("authpipe test CA");
        let (other_ca, _) = ca("authpipe other test CA");
        let server_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        Self {
            ca: ca_cert.pem(),
            other_ca: other_ca.pem(),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
        }
    }
}

/// A PostgreSQL instance in a temporary directory, stopped and removed when dropped (also when
/// the test panics).
struct Throwaway {
    bin: PathBuf,
    /// Run the server's tools through `runuser -u postgres` (initdb refuses root).
    as_postgres: bool,
    port: u16,
    dir: tempfile::TempDir,
}

impl Throwaway {
    /// Where initdb is and who runs it; `Err` says why this machine cannot.
    fn prerequisites() -> Result<(PathBuf, bool), String> {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no /usr/lib/postgresql: {e}"))?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        bins.sort_by_key(|bin| {
            let version = bin
                .parent()
                .and_then(|v| v.file_name()?.to_str()?.parse().ok());
            version.unwrap_or(0u32)
        });
        let bin = bins.pop().ok_or("no initdb under /usr/lib/postgresql")?;
        let user = Command::new("id")
            .arg("-un")
            .output()
            .map_err(|e| e.to_string())?;
        match String::from_utf8_lossy(&user.stdout).trim() {
            "root" => Ok((bin, true)),
            "postgres" => Ok((bin, false)),
            other => Err(format!("runs as {other}, neither root nor postgres")),
        }
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        // The server's user may not be allowed in the test's working directory.
        command.current_dir(self.dir.path());
        command
    }

    fn run(&self, mut command: Command, what: &str) {
        let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        if !output.status.success() {
            let log = std::fs::read_to_string(self.path("log")).unwrap_or_default();
            panic!(
                "{what} failed: {}{}\nserver log:\n{log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn create(bin: PathBuf, as_postgres: bool, certificates: &Certificates) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let instance = Self {
            bin,
            as_postgres,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        let write = |name: &str, contents: &str| {
            std::fs::write(instance.path(name), contents).unwrap();
        };
        write("ca.pem", &certificates.ca);
        write("other-ca.pem", &certificates.other_ca);
        write("server.crt", &certificates.server_cert);
        write("server.key", &certificates.server_key);
        set_mode(&instance.path("server.key"), 0o600);
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:"]).arg(instance.dir.path());
            instance.run(chown, "chown");
        }
        let mut initdb = instance.tool("initdb");
        initdb
            .args(["-N", "-A", "trust", "-U", "postgres", "-D"])
            .arg(instance.path("data"));
        instance.run(initdb, "initdb");
        // Trust, except for the role that shows SCRAM channel binding over TLS.
        std::fs::write(
            instance.path("data/pg_hba.conf"),
            "local all all trust\n\
             hostssl all binder 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        instance
    }

    /// Starts the server, waiting until it accepts connections (`pg_ctl -w`).
    fn start(&self, ssl: bool) {
        let dir = self.dir.path().display();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} -c fsync=off \
             -c ssl={} -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
            self.port,
            if ssl { "on" } else { "off" },
        );
        let mut start = self.tool("pg_ctl");
        start
            .args(["start", "-w", "-t", "30", "-D"])
            .arg(self.path("data"))
            .arg("-l")
            .arg(self.path("log"))
            .args(["-o", &options]);
        self.run(start, "pg_ctl start");
    }

    fn stop(&self, mode: &str) {
        let mut stop = self.tool("pg_ctl");
        stop.args(["stop", "-w", "-m", mode, "-D"])
            .arg(self.path("data"));
        self.run(stop, "pg_ctl stop");
    }

    async fn observer(&self) -> tokio_postgres::Client {
        let (client, driver) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(driver);
        client
    }

    fn url(&self, user: &str, host: &str, params: &[(&str, &str)]) -> String {
        with_params(
            &format!("postgres://{user}:{PASSWORD}@{host}:{}/postgres", self.port),
            params,
        )
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let mut stop = self.tool("pg_ctl");
        stop.args(["stop", "-m", "immediate", "-D"])
            .arg(self.path("data"));
        let _ = stop.output();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn throwaway_server_verifies_as_sslmode_says() {
    let test = "PostgreSQL certificate verification against a throwaway server";
    let (bin, as_postgres) = match Throwaway::prerequisites() {
        Ok(found) => found,
        Err(why) => return skip_or_fail(test, why),
    };
    let started = Instant::now();
    let server = Throwaway::create(bin, as_postgres, &Certificates::generate());
    server.start(true);
    eprintln!("throwaway server up in {:?}", started.elapsed());
    let observer = server.observer().await;
    let schema = "authpipe";
    let ca = server.path("ca.pem").display().to_string();
    let other_ca = server.path("other-ca.pem").display().to_string();
    let url = |host: &str, sslmode: &str, rootcert: &str| {
        let mut params = vec![("sslmode", sslmode)];
        if !rootcert.is_empty() {
            params.push(("sslrootcert", rootcert));
        }
        server.url("postgres", host, &params)
    };
    // The certificate names localhost and 127.0.0.1, not this name, which hostaddr sends to
    // 127.0.0.1 all the same.
    let misnamed = |sslmode: &str, rootcert: &str| {
        let mut params = vec![("hostaddr", "127.0.0.1"), ("sslmode", sslmode)];
        if !rootcert.is_empty() {
            params.push(("sslrootcert", rootcert));
        }
        server.url("postgres", "not-in-the-certificate.test", &params)
    };

    // verify-full: the chain and the name (a DNS name, an IP address).
    for host in ["127.0.0.1", "localhost"] {
        let what = format!("verify-full to {host}");
        assert_connects(
            &observer,
            &url(host, "verify-full", &ca),
            schema,
            true,
            &what,
        )
        .await;
    }
    assert_tls_fails(
        &url("localhost", "verify-full", &other_ca),
        schema,
        "verify-full",
        "invalid peer certificate",
        "verify-full with another CA",
    )
    .await;
    assert_tls_fails(
        &misnamed("verify-full", &ca),
        schema,
        "verify-full",
        "not valid for name",
        "verify-full to a name the certificate does not hold",
    )
    .await;
    // verify-ca: the chain only.
    let what = "verify-ca to a name the certificate does not hold";
    assert_connects(&observer, &misnamed("verify-ca", &ca), schema, true, what).await;
    assert_tls_fails(
        &url("localhost", "verify-ca", &other_ca),
        schema,
        "verify-ca",
        "invalid peer certificate",
        "verify-ca with another CA",
    )
    .await;
    // require: encrypted, any certificate; with sslrootcert, the chain is checked (libpq).
    let what = "require, a certificate from an unknown CA";
    assert_connects(
        &observer,
        &url("localhost", "require", ""),
        schema,
        true,
        what,
    )
    .await;
    let what = "require with sslrootcert, to a name the certificate does not hold";
    assert_connects(&observer, &misnamed("require", &ca), schema, true, what).await;
    assert_tls_fails(
        &url("localhost", "require", &other_ca),
        schema,
        "require",
        "invalid peer certificate",
        "require with sslrootcert of another CA",
    )
    .await;

    // SCRAM bound to the TLS channel (tls-server-end-point): the connector gives tokio-postgres
    // the server certificate's hash, and the server agrees with it.
    observer
        .batch_execute(&format!(
            "CREATE ROLE binder LOGIN PASSWORD '{PASSWORD}'; GRANT CREATE ON DATABASE postgres TO binder"
        ))
        .await
        .unwrap();
    let bound = |password: &str| {
        server
            .url(
                "binder",
                "localhost",
                &[
                    ("sslmode", "verify-full"),
                    ("sslrootcert", &ca),
                    ("channel_binding", "require"),
                ],
            )
            .replace(PASSWORD, password)
    };
    let what = "SCRAM with channel_binding=require";
    assert_connects(&observer, &bound(PASSWORD), "binder_schema", true, what).await;
    let e = PostgresStore::connect(&bound("wrong-password"), "binder_schema")
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(e.code, ErrorCode::StoreError, "{e}");
    assert!(e.message.contains("password authentication failed"), "{e}");
    assert!(!e.message.contains("wrong-password"), "{e}");

    // A server without TLS: prefer falls back to plaintext, require refuses.
    drop(observer);
    server.stop("fast");
    server.start(false);
    let observer = server.observer().await;
    let what = "prefer, the server offers no TLS";
    assert_connects(
        &observer,
        &url("localhost", "prefer", ""),
        schema,
        false,
        what,
    )
    .await;
    assert_tls_fails(
        &url("localhost", "require", ""),
        schema,
        "require",
        "server does not support TLS",
        "require, the server offers no TLS",
    )
    .await;
    eprintln!("throwaway server test done in {:?}", started.elapsed());
}
