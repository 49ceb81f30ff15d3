//! The cluster's certificate authority and node certificates.
//!
//! Only holders of a certificate from the cluster CA may join, and the
//! certificate says which role its holder plays, so a peer can check what the
//! other side may send without trusting anything the other side claims.
//!
//! A node certificate carries three DNS subject alternative names:
//!
//! * [`SERVER_NAME`] (`node.allot`): nodes are dialled by IP address, so every
//!   server is verified against this one fixed name instead;
//! * `<role>.role.allot`: the role, read back with
//!   [`role_of`] after the handshake (webpki's name matching does the parsing,
//!   so no X.509 parser of our own touches peer input);
//! * `<name>.name.allot`: the node's name, for logs and status.
//!
//! Files in the PKI directory: `ca.pem` and `ca.key` (the CA), and
//! `<name>.pem` / `<name>.key` per node. Keys are written with mode 0600.
//! Certificates use ECDSA P-256 keys, which ring signs and verifies quickly.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use allot_wire::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The name every server certificate is valid for; clients verify servers
/// against it because nodes are addressed by IP, not by DNS name.
pub const SERVER_NAME: &str = "node.allot";

/// File name of the CA certificate in a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Longest node name accepted; keeps `<name>.name.allot` a valid DNS name
/// (labels are at most 63 bytes, but dots split the name into labels).
pub const MAX_NAME_LEN: usize = 64;

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
        "{} not found: no certificate for node `{name}`; run \
         `allot cert issue --dir {} --name {name} --role ROLE`",
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
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A loaded node identity: the CA to trust, our certificate and key, and the
/// name and role the certificate was issued for.
pub struct Pki {
    /// The node's name, as written in its certificate.
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
    /// Loads `ca.pem`, `<name>.pem` and `<name>.key` from `dir`, checks that the
    /// certificate was issued by that CA for `name`, and reads its role.
    pub fn load(dir: &Path, name: &str) -> Result<Pki, PkiError> {
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
        verify_chain(&ca, &cert).map_err(|what| PkiError::BadFile {
            path: cert_path.clone(),
            what: format!("{what} against {}", ca_path.display()),
        })?;
        let role = role_of(&cert).map_err(|e| PkiError::BadFile {
            path: cert_path.clone(),
            what: e.to_string(),
        })?;
        match name_of(&cert) {
            Some(n) if n == name => {}
            other => {
                return Err(PkiError::BadFile {
                    path: cert_path,
                    what: format!(
                        "issued for node `{}`, not `{name}`",
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

/// Issues a certificate for node `name` with `role`, signed by the CA in
/// `dir`; writes `dir/<name>.pem` and `dir/<name>.key` (mode 0600).
pub fn issue(dir: &Path, name: &str, role: Role) -> Result<(), PkiError> {
    validate_name(name)?;
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
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    // The issuer was rebuilt from the key and a fixed name, not parsed from
    // ca.pem: make sure what we signed really chains to ca.pem before writing.
    verify_chain(&ca_cert, cert.der()).map_err(|what| PkiError::BadFile {
        path: ca_cert_path.clone(),
        what: format!(
            "a certificate signed with {} does not verify against it ({what}); \
             ca.pem and ca.key do not belong together",
            ca_key_path.display()
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

/// Checks that `cert` chains to `ca` for both client and server use, with the
/// same algorithms and clock the TLS stack will use.
fn verify_chain(ca: &CertificateDer<'_>, cert: &CertificateDer<'_>) -> Result<(), String> {
    let anchor =
        webpki::anchor_from_trusted_cert(ca).map_err(|e| format!("bad CA certificate ({e})"))?;
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("certificate cannot be parsed ({e})"))?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let now = UnixTime::now();
    let anchors = [anchor];
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(algs, &anchors, &[], now, usage, None, None)
            .map_err(|e| format!("certificate does not verify ({e})"))?;
    }
    Ok(())
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
