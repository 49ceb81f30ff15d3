//! When a certificate is valid, and whether it is: the window one is
//! issued for, and its check against the CA at a given time (the TLS
//! stack's own check, webpki's), saying which end of the window was
//! crossed and where both ends are, for an error that says when it
//! expired and how to renew it.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, UnixTime};

use super::PkiError;

/// The last second X.509's GeneralizedTime can say (9999-12-31 23:59:59
/// UTC): no certificate is valid past it.
const LAST_SECOND: u64 = 253_402_300_799;

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
        let not_after = not_before
            .checked_add(u64::from(days) * 86_400)
            .filter(|&t| t <= LAST_SECOND)
            .ok_or_else(|| {
                PkiError::BadValidity(format!("{days} days from {} is past 9999", utc(not_before)))
            })?;
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

/// Why a certificate does not verify against the CA.
pub(super) enum ChainError {
    /// Its validity ended before the time checked.
    Expired { not_before: u64, not_after: u64 },
    /// Its validity begins after the time checked.
    NotYetValid { not_before: u64, not_after: u64 },
    /// Anything else.
    Other(String),
}

impl ChainError {
    pub(super) fn text(&self) -> String {
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
pub(super) fn verify_chain(
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
        Bound::After => LAST_SECOND,
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
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds as rcgen wants them.
pub(super) fn offset_time(secs: u64) -> Result<time::OffsetDateTime, PkiError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| PkiError::BadValidity(format!("{secs} is not a usable time")))
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    format!("{} UTC", crate::utc::date_time(secs))
}
