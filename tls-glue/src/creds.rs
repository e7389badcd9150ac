//! TLS credentials in the QEMU `tls-creds-x509` layout, with load-time sanity checks.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::backend::{CryptoBackend, TimeSource};
use crate::x509::{Cert, Crl, KeyAlg, format_dn, format_unix, ku, normalize_sec1};

/// Which side of TLS the credentials are for (QEMU `endpoint=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A TLS server: needs `server-cert.pem` and `server-key.pem`.
    Server,
    /// A TLS client: `client-cert.pem` and `client-key.pem` are optional.
    Client,
}

impl Endpoint {
    /// File name of the own certificate in the QEMU layout.
    pub fn cert_file(self) -> &'static str {
        match self {
            Endpoint::Server => "server-cert.pem",
            Endpoint::Client => "client-cert.pem",
        }
    }

    /// File name of the own private key in the QEMU layout.
    pub fn key_file(self) -> &'static str {
        match self {
            Endpoint::Server => "server-key.pem",
            Endpoint::Client => "client-key.pem",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Endpoint::Server => "server",
            Endpoint::Client => "client",
        }
    }
}

/// File name of the CA certificates in the QEMU layout.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// File name of the (optional) certificate revocation list in the QEMU layout.
pub const CA_CRL_FILE: &str = "ca-crl.pem";

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Loading fails.
    Error,
    /// Loads, but some peers will refuse it or it will break soon.
    Warning,
    /// For information.
    Note,
}

/// What a [`Diagnostic`] is about, for programs; people read [`Diagnostic::message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A required file is missing.
    Missing,
    /// A file could not be read.
    Unreadable,
    /// A file holds no usable PEM/DER object.
    Unparsable,
    /// A certificate has expired.
    Expired,
    /// A certificate is not valid yet.
    NotYetActive,
    /// A CA certificate lacks the basic constraints extension.
    MissingBasicConstraints,
    /// A CA certificate's basic constraints say it is not a CA.
    NotCa,
    /// A leaf certificate is marked as a CA.
    LeafIsCa,
    /// The key usage extension does not allow what the certificate is used for.
    KeyUsage,
    /// The extended key purpose does not allow the TLS role.
    KeyPurpose,
    /// No certificate in `ca-cert.pem` issued the certificate.
    NoIssuer,
    /// The issuer's name matches but its signature does not verify.
    BadSignature,
    /// The private key does not belong to the certificate.
    KeyMismatch,
    /// The key or signature algorithm is not supported by the crypto backend.
    Unsupported,
    /// The own certificate is revoked by `ca-crl.pem`.
    Revoked,
    /// The CRL is past its next-update time.
    CrlOutdated,
    /// The CRL is not signed by a CA in `ca-cert.pem`.
    CrlIssuer,
    /// An insecure or unsupported option combination.
    Option,
    /// General information (names, dates) for the report.
    Info,
}

/// One finding of the credential checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error (loading fails), warning or note.
    pub severity: Severity,
    /// The kind of problem.
    pub problem: Problem,
    /// The file concerned (`ca-cert.pem`, `server-cert.pem`, …; a full path when loaded from a directory).
    pub file: String,
    /// What is wrong, in words an administrator can act on.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        write!(f, "{sev}: {}: {}", self.file, self.message)
    }
}

/// Every finding of a credential check. Loading fails if any is an [`Severity::Error`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Findings in the order they were made.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// Whether loading would fail.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// Whether some finding has this problem kind and names this file.
    pub fn contains(&self, problem: Problem, file: &str) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.problem == problem && d.file.ends_with(file))
    }

    fn push(&mut self, severity: Severity, problem: Problem, file: &str, message: String) {
        self.diagnostics.push(Diagnostic {
            severity,
            problem,
            file: file.to_string(),
            message,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl core::error::Error for Report {}

/// In-memory credential files (PEM, or a single DER object), e.g. compiled into firmware.
#[derive(Debug, Clone, Copy, Default)]
pub struct CredsPem<'a> {
    /// `ca-cert.pem`: one or more CA certificates (required).
    pub ca_cert: Option<&'a [u8]>,
    /// `ca-crl.pem`: CRLs (optional).
    pub ca_crl: Option<&'a [u8]>,
    /// `server-cert.pem` / `client-cert.pem`: leaf first, then intermediates.
    pub cert: Option<&'a [u8]>,
    /// `server-key.pem` / `client-key.pem`: PKCS#1, PKCS#8 or SEC1.
    pub key: Option<&'a [u8]>,
}

/// How to load credentials.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CredsOptions {
    /// Server or client.
    pub endpoint: Endpoint,
    /// Verify the peer's certificate. Default on, as in QEMU. A server then requires client
    /// certificates; a client endpoint cannot turn it off.
    pub verify_peer: bool,
    /// Crypto backend used by the checks and by every configuration made from the credentials.
    pub backend: CryptoBackend,
    /// Clock for validity checks and certificate verification.
    pub time: Arc<dyn TimeSource>,
}

impl CredsOptions {
    /// Options with `verify_peer` on.
    pub fn new(endpoint: Endpoint, backend: CryptoBackend, time: Arc<dyn TimeSource>) -> Self {
        Self {
            endpoint,
            verify_peer: true,
            backend,
            time,
        }
    }

    /// Options with the platform's default backend and the system clock.
    #[cfg(all(
        feature = "std",
        any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core")
    ))]
    pub fn system(endpoint: Endpoint) -> Self {
        Self::new(
            endpoint,
            CryptoBackend::platform_default(),
            Arc::new(crate::backend::SystemClock),
        )
    }

    /// Sets `verify_peer`.
    pub fn verify_peer(mut self, on: bool) -> Self {
        self.verify_peer = on;
        self
    }
}

/// Loaded and checked credentials, shared (cheaply cloned) by every configuration and
/// service that uses them, like QEMU's `tls-creds-x509` object.
#[derive(Debug, Clone)]
pub struct TlsCreds {
    pub(crate) inner: Arc<CredsInner>,
}

#[derive(Debug)]
pub(crate) struct CredsInner {
    pub(crate) opts: CredsOptions,
    pub(crate) ca_certs: Vec<CertificateDer<'static>>,
    pub(crate) crls: Vec<CertificateRevocationListDer<'static>>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: Option<PrivateKeyDer<'static>>,
    report: Report,
}

impl TlsCreds {
    /// Loads and checks in-memory credentials. File labels in the report are the QEMU file
    /// names. Fails with the full report if any check is an error.
    pub fn from_pem(pem: &CredsPem<'_>, opts: CredsOptions) -> Result<Self, Report> {
        let labels = Labels::plain(opts.endpoint);
        load(pem, opts, &labels)
    }

    /// Loads the QEMU directory layout from `dir` (see [`default_dir`]).
    #[cfg(feature = "std")]
    pub fn load_dir(dir: impl AsRef<std::path::Path>, opts: CredsOptions) -> Result<Self, Report> {
        let dir = dir.as_ref();
        let (files, labels, mut report) = read_dir_files(dir, opts.endpoint);
        let pem = files.as_pem();
        match load(&pem, opts, &labels) {
            Ok(c) if report.diagnostics.is_empty() => Ok(c),
            Ok(_) => Err(report),
            Err(r) => {
                report.diagnostics.extend(r.diagnostics);
                Err(report)
            }
        }
    }

    /// Warnings and notes found while loading.
    pub fn report(&self) -> &Report {
        &self.inner.report
    }

    /// Server or client.
    pub fn endpoint(&self) -> Endpoint {
        self.inner.opts.endpoint
    }

    /// Whether peers are verified.
    pub fn verify_peer(&self) -> bool {
        self.inner.opts.verify_peer
    }

    /// The crypto backend.
    pub fn backend(&self) -> &CryptoBackend {
        &self.inner.opts.backend
    }

    /// Subject DN of the own certificate, if any (gnutls/QEMU format).
    pub fn subject_dn(&self) -> Option<String> {
        let c = self.inner.chain.first()?;
        Cert::parse(c.as_ref()).ok().map(|c| c.subject_dn())
    }
}

/// Checks in-memory credentials without keeping them; the report lists every finding.
pub fn check_pem(pem: &CredsPem<'_>, opts: CredsOptions) -> Report {
    let labels = Labels::plain(opts.endpoint);
    match load(pem, opts, &labels) {
        Ok(c) => c.inner.report.clone(),
        Err(r) => r,
    }
}

/// Checks the QEMU directory layout in `dir` for `endpoint` (with `verify_peer` on) using the
/// platform's default backend and the system clock, as `kvmio creds check DIR --endpoint E` does.
#[cfg(all(
    feature = "std",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core")
))]
pub fn check_dir(dir: impl AsRef<std::path::Path>, endpoint: Endpoint) -> Report {
    check_dir_with(dir, CredsOptions::system(endpoint))
}

/// [`check_dir`] with explicit options.
#[cfg(feature = "std")]
pub fn check_dir_with(dir: impl AsRef<std::path::Path>, opts: CredsOptions) -> Report {
    match TlsCreds::load_dir(dir, opts) {
        Ok(c) => c.inner.report.clone(),
        Err(r) => r,
    }
}

/// Where QEMU looks for credentials by default.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirScope {
    /// `/etc/pki/qemu` (system services).
    System,
    /// `$HOME/.pki/qemu` (unprivileged users).
    User,
}

/// The default credentials directory: `/etc/pki/qemu`, or `$HOME/.pki/qemu` for users.
/// `None` if `$HOME` is unset for [`DirScope::User`].
#[cfg(feature = "std")]
pub fn default_dir(scope: DirScope) -> Option<std::path::PathBuf> {
    match scope {
        DirScope::System => Some(std::path::PathBuf::from("/etc/pki/qemu")),
        DirScope::User => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| std::path::PathBuf::from(h).join(".pki").join("qemu")),
    }
}

struct Labels {
    ca: String,
    crl: String,
    cert: String,
    key: String,
}

impl Labels {
    fn plain(e: Endpoint) -> Self {
        Labels {
            ca: CA_CERT_FILE.into(),
            crl: CA_CRL_FILE.into(),
            cert: e.cert_file().into(),
            key: e.key_file().into(),
        }
    }
}

#[cfg(feature = "std")]
struct DirFiles {
    ca: Option<Vec<u8>>,
    crl: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

#[cfg(feature = "std")]
impl DirFiles {
    fn as_pem(&self) -> CredsPem<'_> {
        CredsPem {
            ca_cert: self.ca.as_deref(),
            ca_crl: self.crl.as_deref(),
            cert: self.cert.as_deref(),
            key: self.key.as_deref(),
        }
    }
}

#[cfg(feature = "std")]
fn read_dir_files(dir: &std::path::Path, e: Endpoint) -> (DirFiles, Labels, Report) {
    let mut report = Report::default();
    let label = |n: &str| dir.join(n).display().to_string();
    let labels = Labels {
        ca: label(CA_CERT_FILE),
        crl: label(CA_CRL_FILE),
        cert: label(e.cert_file()),
        key: label(e.key_file()),
    };
    let mut read = |name: &str, l: &str| -> Option<Vec<u8>> {
        match std::fs::read(dir.join(name)) {
            Ok(b) => Some(b),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                report.push(
                    Severity::Error,
                    Problem::Unreadable,
                    l,
                    format!("cannot read the file: {err}"),
                );
                None
            }
        }
    };
    let files = DirFiles {
        ca: read(CA_CERT_FILE, &labels.ca),
        crl: read(CA_CRL_FILE, &labels.crl),
        cert: read(e.cert_file(), &labels.cert),
        key: read(e.key_file(), &labels.key),
    };
    if !dir.is_dir() {
        report.push(
            Severity::Error,
            Problem::Missing,
            &dir.display().to_string(),
            "the credentials directory does not exist".into(),
        );
    }
    (files, labels, report)
}

fn looks_like_der(b: &[u8]) -> bool {
    b.first() == Some(&0x30)
}

/// Every PEM block of `T`'s kind (`-----BEGIN {block}-----`) in `data`, or `data` itself if it
/// is DER; `what` says what the file should hold. Empty (with an error) if none parses.
fn parse_objects<T: PemObject + From<Vec<u8>>>(
    data: &[u8],
    label: &str,
    block: &str,
    what: &str,
    report: &mut Report,
) -> Vec<T> {
    if looks_like_der(data) {
        return alloc::vec![T::from(data.to_vec())];
    }
    let mut out = Vec::new();
    for item in T::pem_slice_iter(data) {
        match item {
            Ok(c) => out.push(c),
            Err(e) => {
                report.push(
                    Severity::Error,
                    Problem::Unparsable,
                    label,
                    format!("cannot parse the PEM data ({e}); expected {what}"),
                );
                return Vec::new();
            }
        }
    }
    if out.is_empty() {
        report.push(
            Severity::Error,
            Problem::Unparsable,
            label,
            format!("no '-----BEGIN {block}-----' block found; expected {what}"),
        );
    }
    out
}

fn parse_certs(
    data: &[u8],
    label: &str,
    what: &str,
    report: &mut Report,
) -> Vec<CertificateDer<'static>> {
    parse_objects(data, label, "CERTIFICATE", what, report)
}

fn parse_key(data: &[u8], label: &str, report: &mut Report) -> Option<PrivateKeyDer<'static>> {
    if looks_like_der(data) {
        return match PrivateKeyDer::try_from(data.to_vec()) {
            Ok(k) => Some(k),
            Err(e) => {
                report.push(
                    Severity::Error,
                    Problem::Unparsable,
                    label,
                    format!("not a DER private key: {e}"),
                );
                None
            }
        };
    }
    if data
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
        || data
            .windows(b"Proc-Type: 4,ENCRYPTED".len())
            .any(|w| w == b"Proc-Type: 4,ENCRYPTED")
    {
        report.push(
            Severity::Error,
            Problem::Unsupported,
            label,
            "the private key is encrypted with a passphrase, which is not supported: store it unencrypted with mode 0600 (certtool --load-privkey K --to-p8 --null-password, or openssl pkey -in K -out K2)".into(),
        );
        return None;
    }
    match PrivateKeyDer::from_pem_slice(data) {
        Ok(PrivateKeyDer::Sec1(k)) => match normalize_sec1(k.secret_sec1_der()) {
            Some(fixed) => Some(PrivateKeyDer::Sec1(fixed.into())),
            None => Some(PrivateKeyDer::Sec1(k)),
        },
        Ok(k) => Some(k),
        Err(e) => {
            report.push(
                Severity::Error,
                Problem::Unparsable,
                label,
                format!("no usable private key found ({e}); expected a PEM 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY' block"),
            );
            None
        }
    }
}

fn describe(c: &Cert<'_>) -> String {
    let dn = c.subject_dn();
    if dn.is_empty() {
        "certificate with an empty subject".into()
    } else {
        format!("certificate '{dn}'")
    }
}

fn check_times(c: &Cert<'_>, now: i64, label: &str, role: &str, report: &mut Report) {
    if c.not_after < now {
        report.push(
            Severity::Error,
            Problem::Expired,
            label,
            format!(
                "the {role} {} expired on {} (now {}): issue a new certificate",
                describe(c),
                format_unix(c.not_after),
                format_unix(now)
            ),
        );
    } else if c.not_after - now < 30 * 86_400 {
        report.push(
            Severity::Warning,
            Problem::Expired,
            label,
            format!(
                "the {role} {} expires soon, on {}",
                describe(c),
                format_unix(c.not_after)
            ),
        );
    }
    if c.not_before > now {
        report.push(
            Severity::Error,
            Problem::NotYetActive,
            label,
            format!(
                "the {role} {} is not yet active: valid from {} (now {}); check this machine's clock",
                describe(c),
                format_unix(c.not_before),
                format_unix(now)
            ),
        );
    }
}

fn check_ca(c: &Cert<'_>, now: i64, label: &str, report: &mut Report) {
    check_times(c, now, label, "CA", report);
    if !c.is_self_issued() {
        report.push(
            Severity::Note,
            Problem::Info,
            label,
            format!(
                "the {} is an intermediate CA (issued by '{}'); it is trusted as given",
                describe(c),
                c.issuer_dn()
            ),
        );
    }
    match c.basic_constraints {
        None => report.push(
            Severity::Error,
            Problem::MissingBasicConstraints,
            label,
            format!(
                "the {} has no basic constraints extension, so it cannot act as a CA (certtool template keyword 'ca')",
                describe(c)
            ),
        ),
        Some(bc) if !bc.value => report.push(
            Severity::Error,
            Problem::NotCa,
            label,
            format!(
                "the {} is not a CA (basic constraints CA:FALSE): this file must hold the CA's certificate, not a server or client certificate",
                describe(c)
            ),
        ),
        _ => {}
    }
    if let Some(k) = c.key_usage
        && k.value & ku::KEY_CERT_SIGN == 0
    {
        report.push(
                if k.critical { Severity::Error } else { Severity::Warning },
                Problem::KeyUsage,
                label,
                format!(
                    "the CA {}'s key usage does not permit certificate signing (keyCertSign; certtool keyword 'cert_signing_key'){}",
                    describe(c),
                    if k.critical { "" } else { "; the extension is not critical, but webpki-based peers will still refuse it" }
                ),
            );
    }
}

fn check_leaf(c: &Cert<'_>, now: i64, label: &str, endpoint: Endpoint, report: &mut Report) {
    let role = endpoint.word();
    check_times(c, now, label, role, report);
    if let Some(bc) = c.basic_constraints
        && bc.value
    {
        report.push(
                Severity::Error,
                Problem::LeafIsCa,
                label,
                format!(
                    "the {role} {} is a CA certificate (basic constraints CA:TRUE); issue a leaf certificate without the 'ca' keyword",
                    describe(c)
                ),
            );
    }
    // Key usage, judged by the key algorithm and the TLS versions rustls offers: every suite
    // is (EC)DHE with signatures, so digitalSignature is what matters. keyEncipherment only
    // matters for TLS 1.2 RSA key transport, which rustls does not implement; QEMU wrongly
    // requires it even for ECDSA/EdDSA keys, which cannot encipher.
    if let Some(k) = c.key_usage {
        if k.value & ku::DIGITAL_SIGNATURE == 0 {
            report.push(
                if k.critical { Severity::Error } else { Severity::Warning },
                Problem::KeyUsage,
                label,
                format!(
                    "the {role} {}'s key usage does not permit digital signatures (certtool keyword 'signing_key'), which every TLS 1.3 and ECDHE handshake needs{}",
                    describe(c),
                    if k.critical { "" } else { " (the extension is not critical; strict peers will still refuse it)" }
                ),
            );
        }
        if c.key_alg.is_rsa() && k.value & ku::KEY_ENCIPHERMENT == 0 {
            report.push(
                Severity::Note,
                Problem::KeyUsage,
                label,
                format!(
                    "the {role} {}'s RSA key lacks keyEncipherment: fine here (TLS 1.3 and ECDHE only), but QEMU/gnutls peers refuse it when the extension is critical",
                    describe(c)
                ),
            );
        }
        if !c.key_alg.is_rsa() && k.value & (ku::KEY_ENCIPHERMENT | ku::KEY_AGREEMENT) != 0 {
            report.push(
                Severity::Note,
                Problem::KeyUsage,
                label,
                format!(
                    "the {role} {} has a {} key with keyEncipherment/keyAgreement usage, which that key type does not use in TLS",
                    describe(c),
                    c.key_alg.name()
                ),
            );
        }
    }
    if let Some(p) = c.purposes {
        let ok = p.value.any
            || match endpoint {
                Endpoint::Server => p.value.server,
                Endpoint::Client => p.value.client,
            };
        if !ok {
            let (want, kw) = match endpoint {
                Endpoint::Server => ("serverAuth", "tls_www_server"),
                Endpoint::Client => ("clientAuth", "tls_www_client"),
            };
            report.push(
                if p.critical { Severity::Error } else { Severity::Warning },
                Problem::KeyPurpose,
                label,
                format!(
                    "the {role} {}'s extended key purpose does not allow use as a TLS {role} ({want}; certtool keyword '{kw}'){}",
                    describe(c),
                    if p.critical { "" } else { "; the extension is not critical so QEMU accepts it, but rustls/webpki peers will refuse the certificate" }
                ),
            );
        }
    }
    if endpoint == Endpoint::Server && !c.has_san {
        report.push(
            Severity::Warning,
            Problem::Info,
            label,
            format!(
                "the server {} has no subject alternative names; clients check host names only there (certtool keywords 'dns_name', 'ip_address')",
                describe(c)
            ),
        );
    }
    if !matches!(
        c.key_alg,
        KeyAlg::Rsa | KeyAlg::EcP256 | KeyAlg::EcP384 | KeyAlg::Ed25519
    ) {
        report.push(
            Severity::Error,
            Problem::Unsupported,
            label,
            format!(
                "the {role} {} uses a {} key; use RSA (2048+ bits), ECDSA P-256/P-384 or Ed25519",
                describe(c),
                c.key_alg.name()
            ),
        );
    }
}

enum Issued {
    By(usize),
    NameOnly,
    Unsupported,
    None,
}

fn find_issuer(c: &Cert<'_>, pool: &[Cert<'_>], backend: &CryptoBackend) -> Issued {
    let mut name_only = None;
    let mut unsupported = None;
    let sig_alg = c.sig_alg();
    for (i, cand) in pool.iter().enumerate() {
        if cand.subject() != c.issuer() {
            continue;
        }
        match backend.verify_signed(
            &cand.spki_alg(),
            cand.public_key(),
            &sig_alg,
            c.tbs,
            c.signature(),
        ) {
            Some(true) => return Issued::By(i),
            Some(false) => name_only = Some(i),
            None => unsupported = Some(i),
        }
    }
    match (unsupported, name_only) {
        (Some(_), _) => Issued::Unsupported,
        (None, Some(_)) => Issued::NameOnly,
        _ => Issued::None,
    }
}

/// Walks from `leaf` through `intermediates` to a CA in `cas`, reporting why it cannot.
fn check_issued(
    leaf: &Cert<'_>,
    intermediates: &[Cert<'_>],
    cas: &[Cert<'_>],
    backend: &CryptoBackend,
    l: &Labels,
    report: &mut Report,
) {
    let mut current = leaf;
    for _ in 0..8 {
        let by_ca = find_issuer(current, cas, backend);
        if let Issued::By(_) = by_ca {
            return;
        }
        if let Issued::By(i) = find_issuer(current, intermediates, backend) {
            current = &intermediates[i];
            continue;
        }
        match by_ca {
            Issued::By(_) => {}
            Issued::NameOnly => report.push(
                Severity::Error,
                Problem::BadSignature,
                &l.cert,
                format!(
                    "the {} names '{}' as issuer, but its signature does not verify with that CA's key in {}: the CA was re-created or the certificate was signed by a different CA with the same name",
                    describe(current),
                    current.issuer_dn(),
                    l.ca
                ),
            ),
            Issued::Unsupported => report.push(
                Severity::Warning,
                Problem::Unsupported,
                &l.cert,
                format!(
                    "cannot check the {}'s signature: the {} backend does not support its signature algorithm",
                    describe(current),
                    backend.name()
                ),
            ),
            Issued::None => {
                let names: Vec<String> = cas.iter().map(|c| format!("'{}'", c.subject_dn())).collect();
                report.push(
                    Severity::Error,
                    Problem::NoIssuer,
                    &l.cert,
                    format!(
                        "the {} has no issuer in the CA chain: it was issued by '{}', but {} holds {}",
                        describe(current),
                        current.issuer_dn(),
                        l.ca,
                        if names.is_empty() { "no usable CA".into() } else { names.join(", ") }
                    ),
                );
            }
        }
        return;
    }
    report.push(
        Severity::Error,
        Problem::NoIssuer,
        &l.cert,
        "the chain is longer than 8 certificates or loops".into(),
    );
}

/// Checks the CRLs of `ca-crl.pem`: issued and signed by a CA in `cas`, up to date, and not
/// revoking the own certificate `leaf`.
fn check_crls(
    crls: &[CertificateRevocationListDer<'_>],
    cas: &[Cert<'_>],
    leaf: Option<&Cert<'_>>,
    now: i64,
    opts: &CredsOptions,
    l: &Labels,
    report: &mut Report,
) {
    for (i, der) in crls.iter().enumerate() {
        let n = i + 1;
        let Ok(crl) = Crl::parse(der.as_ref()) else {
            report.push(
                Severity::Error,
                Problem::Unparsable,
                &l.crl,
                format!("CRL #{n} is not a valid X.509 CRL"),
            );
            continue;
        };
        match cas.iter().find(|ca| ca.subject() == crl.issuer()) {
            None => report.push(
                Severity::Error,
                Problem::CrlIssuer,
                &l.crl,
                format!(
                    "CRL #{n} was issued by '{}', which is not a CA in {}",
                    format_dn(crl.issuer()),
                    l.ca
                ),
            ),
            Some(ca) => {
                if opts.backend.verify_signed(
                    &ca.spki_alg(),
                    ca.public_key(),
                    &crl.sig_alg(),
                    crl.tbs,
                    crl.signature(),
                ) == Some(false)
                {
                    report.push(
                        Severity::Error,
                        Problem::CrlIssuer,
                        &l.crl,
                        format!(
                            "CRL #{n}'s signature does not verify with the CA '{}'",
                            ca.subject_dn()
                        ),
                    );
                }
            }
        }
        if let Some(next) = crl.next_update
            && next < now
        {
            report.push(
                Severity::Warning,
                Problem::CrlOutdated,
                &l.crl,
                format!("CRL #{n} is out of date: its next update was due on {} (now {}); get a fresh CRL from the CA", format_unix(next), format_unix(now)),
            );
        }
        if let Some(leaf) = leaf
            && crl.issuer() == leaf.issuer()
            && crl.lists(leaf.serial())
        {
            report.push(
                Severity::Error,
                Problem::Revoked,
                &l.cert,
                format!(
                    "the {} {} is revoked by {}",
                    opts.endpoint.word(),
                    describe(leaf),
                    l.crl
                ),
            );
        }
    }
}

fn load(pem: &CredsPem<'_>, opts: CredsOptions, l: &Labels) -> Result<TlsCreds, Report> {
    let mut report = Report::default();
    let endpoint = opts.endpoint;
    let now = opts
        .time
        .unix_time()
        .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
    let Some(now) = now else {
        report.push(
            Severity::Error,
            Problem::Option,
            &l.ca,
            "the current time is unknown, so no certificate can be checked".into(),
        );
        return Err(report);
    };
    if endpoint == Endpoint::Client && !opts.verify_peer {
        report.push(
            Severity::Error,
            Problem::Option,
            &l.ca,
            "verify-peer=no is not supported for client endpoints (anyone could impersonate the server): keep verification on and use a trusted-servers store for self-managed servers".into(),
        );
    }

    // CA certificates
    let ca_certs = match pem.ca_cert {
        Some(d) => parse_certs(d, &l.ca, "the CA certificate(s)", &mut report),
        None => {
            report.push(
                Severity::Error,
                Problem::Missing,
                &l.ca,
                "file not found: the CA certificate is required (copy the CA's ca-cert.pem here)"
                    .into(),
            );
            Vec::new()
        }
    };
    let mut cas = Vec::new();
    for (i, der) in ca_certs.iter().enumerate() {
        match Cert::parse(der.as_ref()) {
            Ok(c) => {
                check_ca(&c, now, &l.ca, &mut report);
                cas.push(c);
            }
            Err(_) => report.push(
                Severity::Error,
                Problem::Unparsable,
                &l.ca,
                format!("certificate #{} is not a valid X.509 certificate", i + 1),
            ),
        }
    }

    // own certificate chain and key
    let chain = match pem.cert {
        Some(d) => parse_certs(
            d,
            &l.cert,
            "the certificate (leaf first, then intermediates)",
            &mut report,
        ),
        None => {
            if endpoint == Endpoint::Server {
                report.push(
                    Severity::Error,
                    Problem::Missing,
                    &l.cert,
                    "file not found: a server needs its certificate".into(),
                );
            } else if pem.key.is_some() {
                report.push(
                    Severity::Error,
                    Problem::Missing,
                    &l.cert,
                    format!(
                        "file not found, but {} exists: provide both or neither",
                        endpoint.key_file()
                    ),
                );
            } else {
                report.push(
                    Severity::Note,
                    Problem::Missing,
                    &l.cert,
                    "no client certificate: servers that verify clients (QEMU's default) will refuse this client".into(),
                );
            }
            Vec::new()
        }
    };
    let key = match pem.key {
        Some(d) => parse_key(d, &l.key, &mut report),
        None => {
            if pem.cert.is_some() {
                report.push(
                    Severity::Error,
                    Problem::Missing,
                    &l.key,
                    format!(
                        "file not found: the private key for {} is required",
                        endpoint.cert_file()
                    ),
                );
            }
            None
        }
    };

    let mut parsed_chain = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        match Cert::parse(der.as_ref()) {
            Ok(c) => parsed_chain.push(c),
            Err(_) => {
                report.push(
                    Severity::Error,
                    Problem::Unparsable,
                    &l.cert,
                    format!("certificate #{} is not a valid X.509 certificate", i + 1),
                );
                parsed_chain.clear();
                break;
            }
        }
    }
    if let Some(leaf) = parsed_chain.first() {
        check_leaf(leaf, now, &l.cert, endpoint, &mut report);
        report.push(
            Severity::Note,
            Problem::Info,
            &l.cert,
            format!(
                "{} key, subject '{}', issuer '{}', valid {} to {}{}",
                leaf.key_alg.name(),
                leaf.subject_dn(),
                leaf.issuer_dn(),
                format_unix(leaf.not_before),
                format_unix(leaf.not_after),
                {
                    let names = leaf.san_names();
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!(", names {}", names.join(" "))
                    }
                }
            ),
        );
    }
    for c in parsed_chain.iter().skip(1) {
        check_times(c, now, &l.cert, "intermediate CA", &mut report);
        if !c.basic_constraints.is_some_and(|b| b.value) {
            report.push(
                Severity::Error,
                Problem::NotCa,
                &l.cert,
                format!(
                    "the intermediate {} after the leaf is not a CA; the file must hold the leaf first, then its issuing CAs",
                    describe(c)
                ),
            );
        }
    }

    if let Some((leaf, intermediates)) = parsed_chain.split_first() {
        check_issued(leaf, intermediates, &cas, &opts.backend, l, &mut report);
    }

    // CRLs (a file of white space only lists none)
    let crls = match pem.ca_crl {
        Some(d) if !d.iter().all(u8::is_ascii_whitespace) => {
            parse_objects(d, &l.crl, "X509 CRL", "the CA's CRLs", &mut report)
        }
        _ => Vec::new(),
    };
    check_crls(
        &crls,
        &cas,
        parsed_chain.first(),
        now,
        &opts,
        l,
        &mut report,
    );

    // private key: supported and matching
    if let (Some(k), Some(leaf)) = (&key, parsed_chain.first()) {
        match opts.backend.provider.key_provider.load_private_key(k.clone_key()) {
            Err(_) => report.push(
                Severity::Error,
                Problem::Unsupported,
                &l.key,
                format!("the private key type is not supported by the {} backend (use RSA, ECDSA P-256/P-384 or Ed25519)", opts.backend.name()),
            ),
            Ok(sk) => match sk.public_key() {
                Some(spki) if spki.as_ref() != leaf.spki() => report.push(
                    Severity::Error,
                    Problem::KeyMismatch,
                    &l.key,
                    format!("the private key does not match the certificate in {} ({}): they were not generated together", l.cert, describe(leaf)),
                ),
                Some(_) => {}
                None => report.push(
                    Severity::Note,
                    Problem::Info,
                    &l.key,
                    format!("the {} backend cannot tell whether the key matches the certificate", opts.backend.name()),
                ),
            },
        }
    }

    if report.has_errors() {
        return Err(report);
    }
    let creds = CredsInner {
        opts,
        ca_certs,
        crls,
        chain,
        key,
        report,
    };
    Ok(TlsCreds {
        inner: Arc::new(creds),
    })
}
