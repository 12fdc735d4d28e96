//! The TLS settings, against libpq's documented behaviour and real certificates.

use super::*;
use secrecy::ExposeSecret;

fn tls(url: &str) -> PostgresTls {
    PostgresTls::split_url(url).unwrap().1
}

fn mode(url: &str) -> SslMode {
    tls(url).mode()
}

fn refusal(url: &str) -> String {
    let e = PostgresTls::split_url(url).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(!e.message.contains("hunter2"), "{}", e.message);
    e.message
}

#[test]
fn default_mode_follows_where_the_hosts_are() {
    use SslMode::*;
    for (url, expected) in [
        ("postgres://u:hunter2@127.0.0.1/db", Prefer),
        ("postgres://u@127.10.0.3:5433/db", Prefer),
        ("postgres://u@localhost/db", Prefer),
        ("postgres://u@LocalHost/db", Prefer),
        ("postgres://u@[::1]:5432/db", Prefer),
        ("postgres://u@[::ffff:127.0.0.1]/db", Prefer),
        ("postgres://u@db.internal/db", Require),
        ("postgres://u@10.0.0.5/db", Require),
        ("postgres://u@[2001:db8::1]/db", Require),
        ("postgres://u@localhost.example.com/db", Require),
        // Several hosts: loopback only if all are.
        ("postgres://u@localhost,127.0.0.1:5433/db", Prefer),
        ("postgres://u@localhost,db.internal/db", Require),
        // The address connected to is hostaddr's, when given.
        ("postgres://u@db.internal/db?hostaddr=127.0.0.1", Prefer),
        ("postgres://u@localhost/db?hostaddr=192.0.2.7", Require),
        // Unix sockets: no TLS, whatever sslmode says (as libpq).
        ("postgres:///db?host=/var/run/postgresql", Disable),
        ("postgres://%2Fvar%2Frun%2Fpostgresql/db", Disable),
        (
            "postgres:///db?host=/var/run/postgresql&sslmode=verify-full",
            Disable,
        ),
        ("postgres:///db?host=/tmp&host=localhost", Prefer),
        ("postgres:///db?host=/tmp&host=db.internal", Require),
    ] {
        assert_eq!(mode(url), expected, "{url}");
    }
}

#[test]
fn sslmode_is_taken_off_the_url() {
    use SslMode::*;
    for (value, expected) in [
        ("disable", Disable),
        ("prefer", Prefer),
        ("require", Require),
        ("verify-ca", VerifyCa),
        ("verify-full", VerifyFull),
    ] {
        let (url, tls) = PostgresTls::split_url(&format!(
            "postgres://u:hunter2@db.internal/db?application_name=a&sslmode={value}&sslrootcert=/ca.pem"
        ))
        .unwrap();
        assert_eq!(tls.mode(), expected);
        assert_eq!(
            tls.root_cert,
            Some(RootCertificates::File("/ca.pem".into()))
        );
        assert_eq!(
            url.expose_secret(),
            "postgres://u:hunter2@db.internal/db?application_name=a"
        );
    }
    let (url, _) = PostgresTls::split_url("postgres://u@localhost/db?sslmode=disable").unwrap();
    assert_eq!(url.expose_secret(), "postgres://u@localhost/db");
}

#[test]
fn what_each_mode_checks() {
    let kind = |url: &str| match tls(url).verification() {
        Verification::KeyOnly => "key".to_owned(),
        Verification::Chain(roots) => format!("chain {roots:?}"),
        Verification::ChainAndName(roots) => format!("chain and name {roots:?}"),
    };
    let base = "postgres://u@db.internal/db";
    assert_eq!(kind(&format!("{base}?sslmode=prefer")), "key");
    assert_eq!(
        kind(&format!("{base}?sslmode=prefer&sslrootcert=/ca")),
        "key"
    );
    assert_eq!(kind(base), "key", "require by default");
    assert_eq!(
        kind(&format!("{base}?sslrootcert=/ca")),
        "chain File(\"/ca\")",
        "require with a root certificate is verify-ca, as in libpq"
    );
    assert_eq!(kind(&format!("{base}?sslmode=verify-ca")), "chain System");
    assert_eq!(
        kind(&format!("{base}?sslmode=verify-full")),
        "chain and name System"
    );
    assert_eq!(
        kind(&format!("{base}?sslrootcert=system")),
        "chain and name System",
        "sslrootcert=system defaults to verify-full, as in libpq 16"
    );
    assert_eq!(
        kind(&format!("{base}?sslmode=verify-full&sslrootcert=/ca")),
        "chain and name File(\"/ca\")"
    );
}

#[test]
fn bad_values_are_refused_without_echoing_the_url() {
    let base = "postgres://u:hunter2@db.internal/db";
    let message = refusal(&format!("{base}?sslmode=verify_full"));
    assert!(
        message.contains("disable, prefer, require, verify-ca or verify-full"),
        "{message}"
    );
    assert!(!message.contains("verify_full"), "{message}");
    assert!(refusal(&format!("{base}?sslmode=REQUIRE")).contains("sslmode"));
    assert!(refusal(&format!("{base}?sslrootcert=")).contains("sslrootcert"));
    for weak in ["disable", "prefer", "require", "verify-ca"] {
        let message = refusal(&format!("{base}?sslrootcert=system&sslmode={weak}"));
        assert!(message.contains("verify-full"), "{message}");
    }
    for client in ["sslcert=/c.pem", "sslkey=/k.pem"] {
        let message = refusal(&format!("{base}?{client}"));
        assert!(message.contains("not supported yet"), "{message}");
    }
    assert!(refusal(&format!("{base}?sslcrl=/crl.pem")).contains("sslcrl is not supported"));
    assert!(refusal(&format!("{base}?nonsense=1")).contains("not a valid postgres:// URL"));
}

#[test]
fn direct_negotiation_needs_a_mode_that_requires_tls() {
    let tls = tls("postgres://u@db.internal/db?sslnegotiation=direct");
    assert_eq!(tls.mode(), SslMode::Require);
    let message = refusal("postgres://u@localhost/db?sslnegotiation=direct");
    assert!(message.contains("sslnegotiation=direct"), "{message}");
    refusal("postgres://u@db.internal/db?sslnegotiation=direct&sslmode=prefer");
}

#[test]
fn tokio_postgres_is_told_whether_to_negotiate() {
    let negotiation = |url: &str| {
        let mut config = tokio_postgres::Config::new();
        tls(url).apply(&mut config);
        config.get_ssl_mode()
    };
    use tokio_postgres::config::SslMode as Negotiation;
    let base = "postgres://u@db.internal/db?sslmode=";
    assert_eq!(negotiation(&format!("{base}disable")), Negotiation::Disable);
    assert_eq!(negotiation(&format!("{base}prefer")), Negotiation::Prefer);
    for mode in ["require", "verify-ca", "verify-full"] {
        assert_eq!(negotiation(&format!("{base}{mode}")), Negotiation::Require);
    }
}

#[test]
fn root_certificate_files_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for path in [&missing, &empty] {
        let tls = tls(&format!(
            "postgres://u@db.internal/db?sslmode=verify-full&sslrootcert={}",
            path.display()
        ));
        let e = tls.connector().unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("sslrootcert"), "{}", e.message);
    }
    // Modes that check no chain read no roots.
    tls(&format!(
        "postgres://u@db.internal/db?sslmode=prefer&sslrootcert={}",
        missing.display()
    ))
    .connector()
    .unwrap();
}

#[test]
fn debug_shows_no_secret() {
    let tls = tls("postgres://u:hunter2@db.internal/db");
    let connector = tls.connector().unwrap();
    assert_eq!(tls.to_string(), "sslmode=require");
    assert_eq!(
        format!("{connector:?}"),
        "TlsConnector { sslmode: Require, .. }"
    );
    assert!(!format!("{tls:?}").contains("hunter2"));
}
