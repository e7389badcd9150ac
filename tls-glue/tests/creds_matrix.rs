//! The certificate misconfiguration matrix (QEMU tests/unit/test-crypto-tlscredsx509.c,
//! ported to rcgen-made certificates): each case is loaded from memory and from a directory,
//! and `check_*` lists the problem, naming the file and the problem in words.
#![cfg(all(
    feature = "std",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto")
))]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use rcgen::{IsCa, KeyPair, KeyUsagePurpose};
use time::Duration;
use tls_glue::*;

struct Case {
    name: &'static str,
    endpoint: Endpoint,
    ca: String,
    crl: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

enum Expect {
    /// Loading fails with this problem in this file, and the message contains these words.
    Error(Problem, &'static str, &'static [&'static str]),
    /// Loading succeeds but the report warns about this.
    Warning(Problem, &'static str, &'static [&'static str]),
    /// Loading succeeds without warnings.
    Clean,
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tls-glue-matrix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn check(case: &Case, expect: &Expect) {
    let opts = CredsOptions::new(case.endpoint, default_backend(), Arc::new(SystemClock));
    let pem = CredsPem {
        ca_cert: Some(case.ca.as_bytes()),
        ca_crl: case.crl.as_deref().map(str::as_bytes),
        cert: case.cert.as_deref().map(str::as_bytes),
        key: case.key.as_deref().map(str::as_bytes),
    };
    // the same files in a directory
    let dir = tmpdir(case.name);
    std::fs::write(dir.join("ca-cert.pem"), &case.ca).unwrap();
    if let Some(c) = &case.crl {
        std::fs::write(dir.join("ca-crl.pem"), c).unwrap();
    }
    if let Some(c) = &case.cert {
        std::fs::write(dir.join(case.endpoint.cert_file()), c).unwrap();
    }
    if let Some(k) = &case.key {
        std::fs::write(dir.join(case.endpoint.key_file()), k).unwrap();
    }
    let loaded = TlsCreds::from_pem(&pem, opts.clone());
    let loaded_dir = TlsCreds::load_dir(&dir, opts.clone());
    let report = check_pem(&pem, opts.clone());
    let report_dir = check_dir_with(&dir, opts);
    let _ = std::fs::remove_dir_all(&dir);
    let find = |r: &Report, sev: Severity, p: Problem, file: &str, words: &[&str]| {
        r.diagnostics.iter().any(|d| {
            d.severity == sev
                && d.problem == p
                && d.file.ends_with(file)
                && words.iter().all(|w| d.message.contains(w))
                && d.to_string().contains(file)
        })
    };
    match expect {
        Expect::Error(p, file, words) => {
            let e = loaded.expect_err(case.name);
            let ed = loaded_dir.expect_err(case.name);
            for r in [&e, &ed, &report, &report_dir] {
                assert!(r.has_errors(), "{}: {r}", case.name);
                assert!(
                    find(r, Severity::Error, *p, file, words),
                    "{}: wanted {p:?} in {file} with {words:?}, got:\n{r}",
                    case.name
                );
            }
            // the directory report names the full path
            assert!(
                ed.to_string().contains(&format!("/{file}")),
                "{}: {ed}",
                case.name
            );
        }
        Expect::Warning(p, file, words) => {
            let c = loaded.unwrap_or_else(|r| panic!("{}: {r}", case.name));
            loaded_dir.unwrap_or_else(|r| panic!("{}: {r}", case.name));
            assert!(!report.has_errors() && !report_dir.has_errors());
            assert!(
                find(c.report(), Severity::Warning, *p, file, words),
                "{}: {}",
                case.name,
                c.report()
            );
            assert!(find(&report_dir, Severity::Warning, *p, file, words));
        }
        Expect::Clean => {
            let c = loaded.unwrap_or_else(|r| panic!("{}: {r}", case.name));
            loaded_dir.unwrap_or_else(|r| panic!("{}: {r}", case.name));
            assert!(
                c.report()
                    .diagnostics
                    .iter()
                    .all(|d| d.severity == Severity::Note),
                "{}: {}",
                case.name,
                c.report()
            );
        }
    }
}

fn server_case(name: &'static str, ca: &Ca, leaf: &Leaf) -> Case {
    Case {
        name,
        endpoint: Endpoint::Server,
        ca: ca.pem.clone(),
        crl: None,
        cert: Some(leaf.pem.clone()),
        key: Some(leaf.key_pem.clone()),
    }
}

fn client_case(name: &'static str, ca: &Ca, leaf: &Leaf) -> Case {
    Case {
        endpoint: Endpoint::Client,
        ..server_case(name, ca, leaf)
    }
}

fn key() -> KeyPair {
    KeyPair::generate().unwrap()
}

#[test]
fn misconfiguration_matrix() {
    use Expect::*;
    use Problem as P;
    let ca = Ca::new("Test CA");
    let good_server = ca.leaf("localhost", true);
    let good_client = ca.leaf("client.example.com", false);

    let mut cases: Vec<(Case, Expect)> = Vec::new();
    cases.push((server_case("good-server", &ca, &good_server), Clean));
    cases.push((client_case("good-client", &ca, &good_client), Clean));

    // 1. CA without basic constraints
    let ca_no_bc = Ca::with("No BC CA", key(), |p| p.is_ca = IsCa::NoCa);
    let leaf = ca_no_bc.leaf("localhost", true);
    cases.push((
        server_case("ca-no-basic-constraints", &ca_no_bc, &leaf),
        Error(
            P::MissingBasicConstraints,
            "ca-cert.pem",
            &["basic constraints", "CA"],
        ),
    ));

    // 2. the CA file holds a leaf (CA:FALSE)
    cases.push((
        Case {
            ca: good_server.pem.clone(),
            ..server_case("ca-is-a-leaf", &ca, &good_server)
        },
        Error(P::NotCa, "ca-cert.pem", &["not a CA", "CA:FALSE"]),
    ));

    // 3. the server certificate is a CA
    let leaf_ca = ca.leaf_with("localhost", true, key(), |p| {
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    });
    cases.push((
        server_case("leaf-is-ca", &ca, &leaf_ca),
        Error(P::LeafIsCa, "server-cert.pem", &["CA:TRUE"]),
    ));

    // 4-6. expired CA / server / client
    let old_ca = Ca::with("Old CA", key(), |p| {
        p.not_before = now() - Duration::days(400);
        p.not_after = now() - Duration::days(2);
    });
    let leaf = old_ca.leaf("localhost", true);
    cases.push((
        server_case("expired-ca", &old_ca, &leaf),
        Error(P::Expired, "ca-cert.pem", &["expired on", "(now "]),
    ));
    let expired = |p: &mut rcgen::CertificateParams| {
        p.not_before = now() - Duration::days(30);
        p.not_after = now() - Duration::days(1);
    };
    let leaf = ca.leaf_with("localhost", true, key(), expired);
    cases.push((
        server_case("expired-server", &ca, &leaf),
        Error(
            P::Expired,
            "server-cert.pem",
            &["server certificate", "expired on", "UTC"],
        ),
    ));
    let leaf = ca.leaf_with("client.example.com", false, key(), expired);
    cases.push((
        client_case("expired-client", &ca, &leaf),
        Error(
            P::Expired,
            "client-cert.pem",
            &["client certificate", "expired on"],
        ),
    ));

    // 7-8. not yet active server / CA
    let leaf = ca.leaf_with("localhost", true, key(), |p| {
        p.not_before = now() + Duration::days(2);
        p.not_after = now() + Duration::days(20);
    });
    cases.push((
        server_case("future-server", &ca, &leaf),
        Error(
            P::NotYetActive,
            "server-cert.pem",
            &["not yet active", "clock"],
        ),
    ));
    let future_ca = Ca::with("Future CA", key(), |p| {
        p.not_before = now() + Duration::days(3)
    });
    let leaf = future_ca.leaf("localhost", true);
    cases.push((
        server_case("future-ca", &future_ca, &leaf),
        Error(P::NotYetActive, "ca-cert.pem", &["not yet active"]),
    ));

    // 9. critical key usage without digitalSignature
    let leaf = ca.leaf_with("localhost", true, key(), |p| {
        p.key_usages = vec![];
        p.custom_extensions.push(ku_ext(&[3], true)); // dataEncipherment only
    });
    cases.push((
        server_case("critical-wrong-ku", &ca, &leaf),
        Error(P::KeyUsage, "server-cert.pem", &["digital signatures"]),
    ));
    // 10. non-critical wrong key usage: warning only (QEMU ignores it too)
    let leaf = ca.leaf_with("localhost", true, key(), |p| {
        p.key_usages = vec![];
        p.custom_extensions.push(ku_ext(&[3], false));
    });
    cases.push((
        server_case("noncritical-wrong-ku", &ca, &leaf),
        Warning(P::KeyUsage, "server-cert.pem", &["digital signatures"]),
    ));
    // 11. CA with critical key usage lacking keyCertSign
    let ca_bad_ku = Ca::with("Bad KU CA", key(), |p| {
        p.key_usages = vec![KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature]
    });
    let leaf = ca_bad_ku.leaf("localhost", true);
    cases.push((
        server_case("ca-critical-ku-no-certsign", &ca_bad_ku, &leaf),
        Error(P::KeyUsage, "ca-cert.pem", &["certificate signing"]),
    ));

    // 12. critical EKU without serverAuth (a client certificate used as server)
    let leaf = ca.leaf_with("localhost", true, key(), |p| {
        p.extended_key_usages = vec![];
        p.custom_extensions.push(eku_ext(&[CLIENT_AUTH], true));
    });
    cases.push((
        server_case("critical-wrong-eku", &ca, &leaf),
        Error(
            P::KeyPurpose,
            "server-cert.pem",
            &["serverAuth", "tls_www_server"],
        ),
    ));
    // 13. non-critical wrong EKU: accepted (as QEMU), with a warning about strict peers
    let leaf = ca.leaf_with("localhost", true, key(), |p| {
        p.extended_key_usages = vec![];
        p.custom_extensions.push(eku_ext(&[CODE_SIGNING], false));
    });
    cases.push((
        server_case("noncritical-wrong-eku", &ca, &leaf),
        Warning(
            P::KeyPurpose,
            "server-cert.pem",
            &["serverAuth", "not critical"],
        ),
    ));
    // 14. client certificate with critical serverAuth-only EKU
    let leaf = ca.leaf_with("client.example.com", false, key(), |p| {
        p.extended_key_usages = vec![];
        p.custom_extensions.push(eku_ext(&[SERVER_AUTH], true));
    });
    cases.push((
        client_case("client-critical-wrong-eku", &ca, &leaf),
        Error(P::KeyPurpose, "client-cert.pem", &["clientAuth"]),
    ));
    // 15. no EKU at all: every purpose allowed
    let leaf = ca.leaf_with("localhost", true, key(), |p| p.extended_key_usages = vec![]);
    cases.push((server_case("no-eku", &ca, &leaf), Clean));

    // 16. leaf signed by another CA
    let other = Ca::new("Other CA");
    let leaf = other.leaf("localhost", true);
    cases.push((
        server_case("other-ca", &ca, &leaf),
        Error(
            P::NoIssuer,
            "server-cert.pem",
            &["no issuer in the CA chain", "Other CA", "Test CA"],
        ),
    ));
    // 17. another CA with the same name (re-created CA): signature does not verify
    let twin = Ca::new("Test CA");
    let leaf = twin.leaf("localhost", true);
    cases.push((
        server_case("same-name-other-key", &ca, &leaf),
        Error(
            P::BadSignature,
            "server-cert.pem",
            &["signature does not verify"],
        ),
    ));

    // 18. key does not match the certificate
    cases.push((
        Case {
            key: Some(good_client.key_pem.clone()),
            ..server_case("key-mismatch", &ca, &good_server)
        },
        Error(
            P::KeyMismatch,
            "server-key.pem",
            &["does not match", "server-cert.pem"],
        ),
    ));

    // 19. ECDSA server certificate without keyEncipherment, critical KU: accepted (QEMU refuses)
    let leaf = ca.leaf_with("localhost", true, key(), |p| {
        p.key_usages = vec![];
        p.custom_extensions.push(ku_ext(&[0], true));
    });
    cases.push((
        server_case("ecdsa-without-keyencipherment", &ca, &leaf),
        Clean,
    ));

    // 20-22. missing files
    cases.push((
        Case {
            cert: None,
            ..server_case("missing-server-cert", &ca, &good_server)
        },
        Error(P::Missing, "server-cert.pem", &["file not found"]),
    ));
    cases.push((
        Case {
            key: None,
            ..server_case("missing-server-key", &ca, &good_server)
        },
        Error(P::Missing, "server-key.pem", &["file not found"]),
    ));
    cases.push((
        Case {
            key: None,
            ..client_case("client-cert-without-key", &ca, &good_client)
        },
        Error(P::Missing, "client-key.pem", &["private key"]),
    ));

    // 23-25. unparsable PEM
    cases.push((
        Case {
            ca: "this is not a certificate\n".into(),
            ..server_case("garbage-ca", &ca, &good_server)
        },
        Error(P::Unparsable, "ca-cert.pem", &["BEGIN CERTIFICATE"]),
    ));
    let broken = good_server.pem.replace("\n", "").replacen("MII", "M!I", 1);
    cases.push((
        Case {
            cert: Some(broken),
            ..server_case("broken-server-pem", &ca, &good_server)
        },
        Error(P::Unparsable, "server-cert.pem", &[]),
    ));
    cases.push((
        Case {
            key: Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into()),
            ..server_case("broken-key", &ca, &good_server)
        },
        Error(P::Unsupported, "server-key.pem", &["not supported"]),
    ));
    // 26. encrypted key
    cases.push((
        Case { key: Some("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".into()), ..server_case("encrypted-key", &ca, &good_server) },
        Error(P::Unsupported, "server-key.pem", &["encrypted"]),
    ));

    // 27. the server's own certificate is revoked by the CRL
    cases.push((
        Case {
            crl: Some(ca.crl(&[&good_server.serial])),
            ..server_case("own-cert-revoked", &ca, &good_server)
        },
        Error(P::Revoked, "server-cert.pem", &["revoked by"]),
    ));
    // 28. CRL from another CA
    cases.push((
        Case {
            crl: Some(other.crl(&[])),
            ..server_case("crl-other-ca", &ca, &good_server)
        },
        Error(P::CrlIssuer, "ca-crl.pem", &["not a CA in"]),
    ));
    // 29. an empty valid CRL is fine
    cases.push((
        Case {
            crl: Some(ca.crl(&[])),
            ..server_case("crl-ok", &ca, &good_server)
        },
        Clean,
    ));
    // 29b. a CRL file of white space only lists no CRL; one without a CRL block is an error,
    // and so is a broken PEM block
    cases.push((
        Case {
            crl: Some(" \n\n".into()),
            ..server_case("crl-blank", &ca, &good_server)
        },
        Clean,
    ));
    cases.push((
        Case {
            crl: Some(ca.pem.clone()),
            ..server_case("crl-no-block", &ca, &good_server)
        },
        Error(P::Unparsable, "ca-crl.pem", &["BEGIN X509 CRL"]),
    ));
    cases.push((
        Case {
            crl: Some("-----BEGIN X509 CRL-----\n!!!\n".into()),
            ..server_case("crl-broken-pem", &ca, &good_server)
        },
        Error(P::Unparsable, "ca-crl.pem", &["cannot parse the PEM data"]),
    ));

    // 30. chain: leaf + intermediate in the cert file, root in ca-cert.pem
    let inter_key = key();
    let mut inter_params = rcgen::CertificateParams::default();
    inter_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Intermediate CA");
    inter_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    inter_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    inter_params.not_before = now() - Duration::days(1);
    inter_params.not_after = now() + Duration::days(100);
    let inter_pem = inter_params
        .signed_by(&inter_key, &ca.issuer())
        .unwrap()
        .pem();
    let inter = Ca {
        key: inter_key,
        params: inter_params,
        pem: inter_pem.clone(),
    };
    let leaf = inter.leaf("localhost", true);
    let chained = Leaf {
        pem: format!("{}{}", leaf.pem, inter_pem),
        key_pem: leaf.key_pem.clone(),
        serial: leaf.serial.clone(),
    };
    cases.push((server_case("chain-with-intermediate", &ca, &chained), Clean));
    cases.push((
        server_case("chain-missing-intermediate", &ca, &leaf),
        Error(P::NoIssuer, "server-cert.pem", &["Intermediate CA"]),
    ));

    // 31. client endpoint with verify-peer off
    let mut c = client_case("client-verify-off", &ca, &good_client);
    c.name = "client-verify-off";
    let opts = CredsOptions::new(Endpoint::Client, default_backend(), Arc::new(SystemClock))
        .verify_peer(false);
    let r = check_pem(
        &CredsPem {
            ca_cert: Some(c.ca.as_bytes()),
            ..Default::default()
        },
        opts,
    );
    assert!(
        r.contains(Problem::Option, "ca-cert.pem") && r.has_errors(),
        "{r}"
    );

    assert!(cases.len() >= 25);
    for (case, expect) in &cases {
        check(case, expect);
    }
}

#[test]
fn report_lists_every_problem_not_just_the_first() {
    let ca = Ca::with("Old CA", KeyPair::generate().unwrap(), |p| {
        p.not_before = now() - Duration::days(400);
        p.not_after = now() - Duration::days(2);
        p.is_ca = IsCa::NoCa;
    });
    let leaf = Ca::new("Other").leaf_with("localhost", true, KeyPair::generate().unwrap(), |p| {
        p.not_after = now() - Duration::days(1);
        p.not_before = now() - Duration::days(10);
    });
    let r = check_pem(
        &CredsPem {
            ca_cert: Some(ca.pem.as_bytes()),
            cert: Some(leaf.pem.as_bytes()),
            key: Some(leaf.key_pem.as_bytes()),
            ca_crl: None,
        },
        CredsOptions::new(Endpoint::Server, default_backend(), Arc::new(SystemClock)),
    );
    assert!(r.contains(Problem::Expired, "ca-cert.pem"), "{r}");
    assert!(
        r.contains(Problem::MissingBasicConstraints, "ca-cert.pem"),
        "{r}"
    );
    assert!(r.contains(Problem::Expired, "server-cert.pem"), "{r}");
    assert!(r.contains(Problem::NoIssuer, "server-cert.pem"), "{r}");
    assert!(r.errors().count() >= 4);
    // one line per finding, "severity: file: message"
    assert!(r.to_string().lines().all(|l| l.starts_with("error: ")
        || l.starts_with("warning: ")
        || l.starts_with("note: ")));
}

#[test]
fn missing_directory_and_default_dirs() {
    let r = check_dir_with(
        "/nonexistent/tls-glue",
        CredsOptions::system(Endpoint::Server),
    );
    assert!(
        r.contains(Problem::Missing, "/nonexistent/tls-glue/ca-cert.pem"),
        "{r}"
    );
    assert!(r.contains(Problem::Missing, "server-cert.pem"));
    assert_eq!(
        default_dir(DirScope::System).unwrap(),
        PathBuf::from("/etc/pki/qemu")
    );
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        assert_eq!(
            default_dir(DirScope::User).unwrap(),
            PathBuf::from(home).join(".pki/qemu")
        );
    }
}

#[test]
fn one_creds_object_serves_several_services() {
    let pki = Pki::new();
    let creds = server_creds_with(&pki.ca.pem, None, &pki.server, true, default_backend());
    // e.g. VNC with an ACL and NBD without, from the same credentials
    let vnc = TlsServerConfig::with_options(&creds, &{
        let mut o = ServerOptions::default();
        o.acl = Some(Acl::allow_only([
            "C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com",
        ]));
        o
    })
    .unwrap();
    let nbd = TlsServerConfig::new(&creds).unwrap();
    let cc = client_creds_with(&pki.ca.pem, None, Some(&pki.client), default_backend());
    let ccfg = TlsClientConfig::new(&cc).unwrap();
    for cfg in [&vnc, &nbd, &vnc] {
        let mut c = TlsLayer::client(&ccfg, "localhost").unwrap();
        let mut s = TlsLayer::server(cfg).unwrap();
        let (rc, rs) = handshake(&mut c, &mut s);
        assert_eq!((rc, rs), (Ok(()), Ok(())));
    }
    // wrong endpoint is a configuration error with a clear message
    let e = TlsClientConfig::new(&creds).unwrap_err();
    assert!(e.to_string().contains("endpoint=client"));
    assert_eq!(
        creds.subject_dn().as_deref(),
        Some("C=GB,ST=London,L=City Of London,O=Test Org,CN=localhost")
    );
}

#[test]
fn shared_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<TlsCreds>();
    send_sync::<TlsServerConfig>();
    send_sync::<TlsClientConfig>();
    send_sync::<CryptoBackend>();
    send::<TlsLayer>();
}
