//! The cluster's certificate authority and node certificates.
//!
//! Only holders of a certificate from the cluster CA may join, and the
//! certificate says which role its holder plays, so a peer can check what the
//! other side may send without trusting anything the other side claims.
//!
//! A node certificate carries three DNS subject alternative names:
//!
//! * [`SERVER_NAME`] (`node.allot`): nodes are dialled by address (a host
//!   name given by the user is resolved first, and may be shared or
//!   change), so every server is verified against this one fixed name;
//! * `<role>.role.allot`: the role, read back with
//!   [`role_of`] after the handshake (webpki's name matching does the parsing,
//!   so no X.509 parser of our own touches peer input);
//! * `<name>.name.allot`: the certificate's name, for logs.
//!
//! **Identity and role.** A certificate grants a *role*; it does not fix
//! the node's *name*. A node announces its name in its `Hello` (the
//! `--name` flag) and peers know it by that name, while what it may do
//! comes from its certificate's role. So one certificate can serve a pool
//! of workers (`--cert POOL --name w-17`): whoever holds the pool
//! certificate and key may join as any worker name, as it could join as a
//! worker at all. Names stay unique where it matters: a distributor refuses
//! a second live worker registering a name already in use.
//!
//! **Expiry.** Node certificates are valid from their issue for a number
//! of days (`allot cert issue --days N`, 365 by default); [`Pki::load`]
//! refuses one that has expired or is not valid yet, saying which, when,
//! and how to issue a new one, and peers refuse it in the TLS handshake.
//! The CA itself does not expire (rcgen's default window, up to the year
//! 4096): renewing it would mean reissuing every certificate at once.
//!
//! Files in the PKI directory: `ca.pem` and `ca.key` (the CA), and
//! `<name>.pem` / `<name>.key` per certificate. Keys are written with mode
//! 0600. Certificates use ECDSA P-256 keys, which ring signs and verifies
//! quickly.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use allot_wire::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The name every server certificate is valid for; clients verify servers
/// against it (and send it as SNI) whatever host name they were given:
/// the certificate proves cluster membership and role, not a host.
pub const SERVER_NAME: &str = "node.allot";

/// File name of the CA certificate in a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Longest node name accepted; keeps `<name>.name.allot` a valid DNS name
/// (labels are at most 63 bytes, but dots split the name into labels).
pub const MAX_NAME_LEN: usize = 64;

/// Days a node certificate is valid by default (`allot cert issue --days`).
pub const DEFAULT_DAYS: u32 = 365;

/// Every role, in the order they are tried when reading a certificate.
const ROLES: [Role; 4] = [Role::Gateway, Role::Distributor, Role::Worker, Role::Client];

/// Common name of the CA. Fixed, because [`issue`] rebuilds the issuer from
/// the CA key and this name instead of parsing `ca.pem` (which would need an
/// X.509 parser); [`issue`] checks the result chains to `ca.pem`.
const CA_COMMON_NAME: &str = "allot cluster CA";

/// What went wrong while creating, issuing or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `create_ca` found a CA already in place.
    #[error(
        "{} already exists: refusing to overwrite the cluster CA (every node certificate \
         depends on it); delete ca.pem and ca.key first if you really want a new CA",
        path.display()
    )]
    CaExists {
        /// The existing file.
        path: PathBuf,
    },
    /// `issue` found a certificate or key for this name already.
    #[error(
        "{} already exists: refusing to overwrite it; delete {name}.pem and {name}.key \
         to issue a new certificate for `{name}`",
        path.display()
    )]
    NodeExists {
        /// The existing file.
        path: PathBuf,
        /// The node name.
        name: String,
    },
    /// The CA files are not there.
    #[error(
        "{} not found: no cluster CA in {}; create one with `allot cert ca --dir {}`",
        path.display(), dir.display(), dir.display()
    )]
    MissingCa {
        /// The missing file.
        path: PathBuf,
        /// The PKI directory.
        dir: PathBuf,
    },
    /// The node's certificate or key is not there.
    #[error(
        "{} not found: no certificate for node `{name}` (a node loads the certificate named \
         by --cert, default its --name); run `allot cert issue --dir {} --name {name} --role ROLE`",
        path.display(), dir.display()
    )]
    MissingNode {
        /// The missing file.
        path: PathBuf,
        /// The PKI directory.
        dir: PathBuf,
        /// The node name.
        name: String,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{}: {what}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The node name is not acceptable.
    #[error(
        "invalid node name `{name}`: {why} (use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ -, \
         not starting or ending with a dot)"
    )]
    BadName {
        /// The rejected name.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// A certificate does not carry exactly one role.
    #[error("certificate {what}")]
    BadRole {
        /// What is wrong with it.
        what: String,
    },
    /// The certificate's validity window has ended.
    #[error(
        "certificate {} expired on {} (valid {} to {}, now {}); issue a new one: {}",
        path.display(), utc(*not_after), utc(*not_before), utc(*not_after), utc(*now),
        reissue(path, role)
    )]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Its role (for the command that issues a new one).
        role: Role,
        /// Start of its validity, Unix seconds.
        not_before: u64,
        /// End of its validity, Unix seconds.
        not_after: u64,
        /// The time it was checked at, Unix seconds.
        now: u64,
    },
    /// The certificate's validity window has not begun (a clock behind, or
    /// a certificate issued on a machine whose clock is ahead).
    #[error(
        "certificate {} is not valid yet: valid from {} (to {}), now {}; check this \
         machine's clock, or issue a new one: {}",
        path.display(), utc(*not_before), utc(*not_after), utc(*now), reissue(path, role)
    )]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Its role (for the command that issues a new one).
        role: Role,
        /// Start of its validity, Unix seconds.
        not_before: u64,
        /// End of its validity, Unix seconds (0 if unknown).
        not_after: u64,
        /// The time it was checked at, Unix seconds.
        now: u64,
    },
    /// A validity window that cannot be issued.
    #[error("bad validity: {0}")]
    BadValidity(String),
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A loaded node credential: the CA to trust, our certificate and key, and
/// the name and role the certificate was issued for. The node's own name is
/// not here: it is what the node announces (see the module doc).
pub struct Pki {
    /// The certificate's name (its file name in the PKI directory).
    pub name: String,
    /// The node's role, as written in its certificate.
    pub role: Role,
    /// The cluster CA certificate (the only trust anchor).
    pub ca: CertificateDer<'static>,
    /// Our certificate (end entity only; the CA signs node certs directly).
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    /// Loads `ca.pem`, `<cert>.pem` and `<cert>.key` from `dir`, checks that
    /// the certificate was issued by that CA for `cert`, is valid now, and
    /// reads its role.
    pub fn load(dir: &Path, cert: &str) -> Result<Pki, PkiError> {
        let name = cert;
        validate_name(name)?;
        let ca_path = dir.join(CA_CERT_FILE);
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        if !ca_path.exists() {
            return Err(PkiError::MissingCa {
                path: ca_path,
                dir: dir.to_path_buf(),
            });
        }
        for path in [&cert_path, &key_path] {
            if !path.exists() {
                return Err(PkiError::MissingNode {
                    path: path.clone(),
                    dir: dir.to_path_buf(),
                    name: name.to_string(),
                });
            }
        }
        let ca = read_cert(&ca_path)?;
        let cert = read_cert(&cert_path)?;
        let key =
            PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|e| PkiError::BadFile {
                path: key_path.clone(),
                what: format!("no private key in PEM format ({e})"),
            })?;
        let role = role_of(&cert).map_err(|e| PkiError::BadFile {
            path: cert_path.clone(),
            what: e.to_string(),
        })?;
        let now = unix_now();
        verify_chain(&ca, &cert, now).map_err(|e| match e {
            ChainError::Expired {
                not_before,
                not_after,
            } => PkiError::Expired {
                path: cert_path.clone(),
                role,
                not_before,
                not_after,
                now,
            },
            ChainError::NotYetValid {
                not_before,
                not_after,
            } => PkiError::NotYetValid {
                path: cert_path.clone(),
                role,
                not_before,
                not_after,
                now,
            },
            ChainError::Other(what) => PkiError::BadFile {
                path: cert_path.clone(),
                what: format!("{what} against {}", ca_path.display()),
            },
        })?;
        match name_of(&cert) {
            Some(n) if n == name => {}
            other => {
                return Err(PkiError::BadFile {
                    path: cert_path,
                    what: format!(
                        "issued as `{}`, not `{name}` (renamed files?)",
                        other.as_deref().unwrap_or("<no name>")
                    ),
                })
            }
        }
        Ok(Pki {
            name: name.to_string(),
            role,
            ca,
            cert,
            key,
        })
    }

    /// Our private key (a copy, since rustls configs take ownership).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// Our certificate chain as rustls wants it.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }
}

impl Clone for Pki {
    fn clone(&self) -> Self {
        Pki {
            name: self.name.clone(),
            role: self.role,
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Pki {
    // Leaves the key out so it never lands in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Checks that `pki` was issued for `role`: a node started with another
/// role's certificate would be refused by every peer, so it is refused at
/// start with the certificate named.
pub fn check_role(pki: &Pki, role: Role) -> Result<(), PkiError> {
    if pki.role == role {
        return Ok(());
    }
    Err(PkiError::BadRole {
        what: format!(
            "`{}` is for role {}, not {}: give --cert a {} certificate",
            pki.name,
            pki.role.as_str(),
            role.as_str(),
            role.as_str()
        ),
    })
}

/// Creates the cluster CA: writes `dir/ca.pem` and `dir/ca.key` (mode 0600).
/// Creates `dir` if needed; never overwrites an existing CA.
pub fn create_ca(dir: &Path) -> Result<(), PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(PkiError::CaExists { path: path.clone() });
        }
    }
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true).map_err(|e| {
        exists_as(
            e,
            PkiError::CaExists {
                path: key_path.clone(),
            },
        )
    })?;
    write_new(&cert_path, cert.pem().as_bytes(), false).map_err(|e| {
        exists_as(
            e,
            PkiError::CaExists {
                path: cert_path.clone(),
            },
        )
    })?;
    Ok(())
}

/// When a certificate is valid: from `not_before` to `not_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start, Unix seconds.
    pub not_before: u64,
    /// End, Unix seconds.
    pub not_after: u64,
}

impl Validity {
    /// Valid from now for `days` days.
    pub fn days_from_now(days: u32) -> Result<Validity, PkiError> {
        Validity::days_from(unix_now(), days)
    }

    /// Valid from `not_before` (Unix seconds) for `days` days. A certificate
    /// must be valid for at least one day: a shorter one would expire
    /// before the cluster had much use of it.
    pub fn days_from(not_before: u64, days: u32) -> Result<Validity, PkiError> {
        if days == 0 {
            return Err(PkiError::BadValidity(
                "a certificate must be valid for at least 1 day".into(),
            ));
        }
        // Up to the year 9999 (X.509's GeneralizedTime ends there).
        const LAST: u64 = 253_402_300_799;
        let not_after = not_before
            .checked_add(u64::from(days) * 86_400)
            .filter(|&t| t <= LAST)
            .ok_or_else(|| {
                PkiError::BadValidity(format!("{days} days from {} is past 9999", utc(not_before)))
            })?;
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

/// Issues a certificate named `name` with `role`, valid from now for
/// [`DEFAULT_DAYS`], signed by the CA in `dir`; writes `dir/<name>.pem`
/// and `dir/<name>.key` (mode 0600).
pub fn issue(dir: &Path, name: &str, role: Role) -> Result<(), PkiError> {
    issue_with(dir, name, role, Validity::days_from_now(DEFAULT_DAYS)?)
}

/// [`issue`] with the given validity.
pub fn issue_with(dir: &Path, name: &str, role: Role, valid: Validity) -> Result<(), PkiError> {
    validate_name(name)?;
    if valid.not_after <= valid.not_before {
        return Err(PkiError::BadValidity(format!(
            "it would end ({}) before it begins ({})",
            utc(valid.not_after),
            utc(valid.not_before)
        )));
    }
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    for path in [&ca_cert_path, &ca_key_path] {
        if !path.exists() {
            return Err(PkiError::MissingCa {
                path: path.clone(),
                dir: dir.to_path_buf(),
            });
        }
    }
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(PkiError::NodeExists {
                path: path.clone(),
                name: name.to_string(),
            });
        }
    }
    let ca_cert = read_cert(&ca_cert_path)?;
    let ca_key_pem = String::from_utf8(read(&ca_key_path)?).map_err(|_| PkiError::BadFile {
        path: ca_key_path.clone(),
        what: "not a PEM file (not UTF-8)".into(),
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::BadFile {
        path: ca_key_path.clone(),
        what: format!("not a usable private key ({e})"),
    })?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let mut params = CertificateParams::new(vec![
        SERVER_NAME.to_string(),
        role_dns_name(role),
        name_dns_name(name),
    ])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node both accepts and dials, so one cert serves both sides.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset_time(valid.not_before)?;
    params.not_after = offset_time(valid.not_after)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    // The issuer was rebuilt from the key and a fixed name, not parsed from
    // ca.pem: make sure what we signed really chains to ca.pem before writing.
    // Checked at its own start, so that a window in the past or future
    // (for tests of expiry) can be issued too.
    verify_chain(&ca_cert, cert.der(), valid.not_before).map_err(|e| PkiError::BadFile {
        path: ca_cert_path.clone(),
        what: format!(
            "a certificate signed with {} does not verify against it ({}); \
             ca.pem and ca.key do not belong together",
            ca_key_path.display(),
            e.text()
        ),
    })?;

    write_new(&key_path, key.serialize_pem().as_bytes(), true).map_err(|e| {
        exists_as(
            e,
            PkiError::NodeExists {
                path: key_path.clone(),
                name: name.to_string(),
            },
        )
    })?;
    write_new(&cert_path, cert.pem().as_bytes(), false).map_err(|e| {
        exists_as(
            e,
            PkiError::NodeExists {
                path: cert_path.clone(),
                name: name.to_string(),
            },
        )
    })?;
    Ok(())
}

/// Creates a CA and one certificate per `(name, role)` in `dir`: a whole
/// cluster's PKI in one call, for tests and the demo.
pub fn create_cluster(dir: &Path, nodes: &[(&str, Role)]) -> Result<(), PkiError> {
    create_ca(dir)?;
    for &(name, role) in nodes {
        issue(dir, name, role)?;
    }
    Ok(())
}

/// The role a certificate was issued for: the one `<role>.role.allot` name
/// it is valid for. The certificate must already be verified (the TLS
/// handshake does that); this only reads it.
pub fn role_of(cert: &CertificateDer<'_>) -> Result<Role, PkiError> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| PkiError::BadRole {
        what: format!("cannot be parsed ({e})"),
    })?;
    let mut found: Option<Role> = None;
    for role in ROLES {
        let name = ServerName::try_from(role_dns_name(role)).map_err(|e| PkiError::BadRole {
            what: format!("role name is not a DNS name ({e})"),
        })?;
        if ee.verify_is_valid_for_subject_name(&name).is_ok() {
            // A wildcard such as `*.role.allot` would match every role; a
            // certificate must name exactly one.
            if let Some(first) = found {
                return Err(PkiError::BadRole {
                    what: format!(
                        "claims more than one role ({} and {})",
                        first.as_str(),
                        role.as_str()
                    ),
                });
            }
            found = Some(role);
        }
    }
    found.ok_or_else(|| PkiError::BadRole {
        what: "carries no allot role (no `<role>.role.allot` name); it was not issued by \
               `allot cert issue`"
            .into(),
    })
}

/// The node name a certificate was issued for (`<name>.name.allot`), if it
/// names exactly one valid node name.
pub fn name_of(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut names = ee
        .valid_dns_names()
        .filter_map(|n| n.strip_suffix(".name.allot"))
        .filter(|n| validate_name(n).is_ok());
    let name = names.next()?;
    match names.next() {
        Some(_) => None,
        None => Some(name.to_string()),
    }
}

/// Checks a node name: 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9._-]`,
/// usable both as a file name and inside a DNS name.
pub fn validate_name(name: &str) -> Result<(), PkiError> {
    let bad = |why| {
        Err(PkiError::BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("it contains a character other than A-Z a-z 0-9 . _ -");
    }
    // Dots split DNS labels: an empty label or an over-long one would make
    // `<name>.name.allot` an invalid DNS name, and `..` is no file name.
    if name.split('.').any(|label| label.is_empty()) {
        return bad("it has an empty part between dots");
    }
    if name.split('.').any(|label| label.len() > 63) {
        return bad("a part between dots is longer than 63 characters");
    }
    Ok(())
}

/// `<role>.role.allot`.
pub fn role_dns_name(role: Role) -> String {
    format!("{}.role.allot", role.as_str())
}

/// `<name>.name.allot`.
fn name_dns_name(name: &str) -> String {
    format!("{name}.name.allot")
}

/// The CA's parameters; see [`CA_COMMON_NAME`] for why they are fixed.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "allot");
    params.distinguished_name = dn;
    // Node certs are signed directly; no intermediate CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Why a certificate does not verify against the CA.
enum ChainError {
    /// Its validity ended before the time checked.
    Expired { not_before: u64, not_after: u64 },
    /// Its validity begins after the time checked.
    NotYetValid { not_before: u64, not_after: u64 },
    /// Anything else.
    Other(String),
}

impl ChainError {
    fn text(&self) -> String {
        match self {
            ChainError::Expired { not_after, .. } => format!("expired on {}", utc(*not_after)),
            ChainError::NotYetValid { not_before, .. } => {
                format!("not valid before {}", utc(*not_before))
            }
            ChainError::Other(s) => s.clone(),
        }
    }
}

/// Checks that `cert` chains to `ca` for both client and server use, with the
/// same algorithms the TLS stack will use, at time `at` (Unix seconds).
fn verify_chain(
    ca: &CertificateDer<'_>,
    cert: &CertificateDer<'_>,
    at: u64,
) -> Result<(), ChainError> {
    let anchor = webpki::anchor_from_trusted_cert(ca)
        .map_err(|e| ChainError::Other(format!("bad CA certificate ({e})")))?;
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| ChainError::Other(format!("certificate cannot be parsed ({e})")))?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let now = UnixTime::since_unix_epoch(Duration::from_secs(at));
    let anchors = [anchor];
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(algs, &anchors, &[], now, usage, None, None)
            .map_err(|e| match e {
                // webpki names only the bound that was crossed; the other
                // is looked up by checking at the far ends of time.
                webpki::Error::CertExpired { not_after, .. } => ChainError::Expired {
                    not_before: bound(&ee, algs, &anchors, Bound::Before).unwrap_or(0),
                    not_after: not_after.as_secs(),
                },
                webpki::Error::CertNotValidYet { not_before, .. } => ChainError::NotYetValid {
                    not_before: not_before.as_secs(),
                    not_after: bound(&ee, algs, &anchors, Bound::After).unwrap_or(0),
                },
                e => ChainError::Other(format!("certificate does not verify ({e})")),
            })?;
    }
    Ok(())
}

/// Which end of a certificate's validity [`bound`] finds.
enum Bound {
    Before,
    After,
}

/// One end of a verified certificate's validity window, read from the
/// error webpki gives when checking at the start or the end of time (so no
/// X.509 parser of our own reads the dates).
fn bound(
    ee: &webpki::EndEntityCert<'_>,
    algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
    anchors: &[rustls_pki_types::TrustAnchor<'_>],
    which: Bound,
) -> Option<u64> {
    let at = match which {
        Bound::Before => 0,
        Bound::After => 253_402_300_799,
    };
    let now = UnixTime::since_unix_epoch(Duration::from_secs(at));
    match ee.verify_for_usage(
        algs,
        anchors,
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    ) {
        Err(webpki::Error::CertNotValidYet { not_before, .. }) => Some(not_before.as_secs()),
        Err(webpki::Error::CertExpired { not_after, .. }) => Some(not_after.as_secs()),
        _ => None,
    }
}

/// Now, in Unix seconds (0 for a clock before 1970).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds as rcgen wants them.
fn offset_time(secs: u64) -> Result<time::OffsetDateTime, PkiError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| PkiError::BadValidity(format!("{secs} is not a usable time")))
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    // Days to a civil date (Howard Hinnant's algorithm, proleptic
    // Gregorian), to show dates without a date library.
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The commands that replace the certificate at `path` (its name is the
/// file's stem) with a new one of `role`.
fn reissue(path: &Path, role: &Role) -> String {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "`rm {d}/{name}.pem {d}/{name}.key && allot cert issue --dir {d} --name {name} \
         --role {} --days {DEFAULT_DAYS}`",
        role.as_str(),
        d = dir.display()
    )
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(&read(path)?).map_err(|e| PkiError::BadFile {
        path: path.to_path_buf(),
        what: format!("no certificate in PEM format ({e})"),
    })
}

/// Writes a file that must not exist yet (`create_new`, so two racing
/// writers cannot both succeed); `secret` files get mode 0600 from the start.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let io_err = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = options.open(path).map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// Turns an "already exists" I/O error into the friendlier `instead`.
fn exists_as(err: PkiError, instead: PkiError) -> PkiError {
    match err {
        PkiError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists => instead,
        other => other,
    }
}
