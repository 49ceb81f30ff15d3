//! The bearer token of `--metrics-token`: read from its file, kept and
//! compared as a SHA-256 digest (so comparing takes the same time however
//! much of a guess is right), and read from a query string the way the
//! dashboard page reads it, so that the two never disagree. A program
//! that prints a dashboard URL (`allot up`) reads the file with
//! [`read_token`] too, so it refuses exactly what the node would, and
//! puts the token in the URL with [`token_query`], the inverse of
//! [`token_param`].

use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Bytes of a token file at most.
pub const MAX_TOKEN: u64 = 4096;

/// Why a token file cannot be used (each names the file, and the flag
/// `--metrics-token` that gave it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// It cannot be opened or read.
    #[error("--metrics-token {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// Longer than [`MAX_TOKEN`].
    #[error("--metrics-token {}: more than the {MAX_TOKEN} bytes a token may have", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
    },
    /// Nothing but white space.
    #[error("--metrics-token {}: the file is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Something else than visible ASCII (the token travels in a header).
    #[error("--metrics-token {}: a token is visible ASCII without spaces", path.display())]
    NotVisible {
        /// The file.
        path: PathBuf,
    },
}

/// The token in `path`: its content without surrounding white space;
/// visible ASCII only (it travels in a header). At most [`MAX_TOKEN`]
/// bytes are read, whatever the file's size says: a device or a pipe
/// (`/dev/zero`) reports none and would never end.
pub fn read_token(path: &Path) -> Result<String, TokenFileError> {
    let path_buf = || path.to_path_buf();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN + 1).read_to_end(&mut bytes))
        .map_err(|source| TokenFileError::Read {
            path: path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_TOKEN {
        return Err(TokenFileError::TooLong { path: path_buf() });
    }
    let text =
        String::from_utf8(bytes).map_err(|_| TokenFileError::NotVisible { path: path_buf() })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty { path: path_buf() });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenFileError::NotVisible { path: path_buf() });
    }
    Ok(token.to_owned())
}

/// SHA-256 of `b`: a token given is compared digest to digest, so the
/// comparison's length does not depend on the guess.
pub(super) fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Equal digests, compared without an early exit.
pub(super) fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The query parameter `token` of a query string.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Param {
    /// Not there, or with a bad escape (so no token can match).
    Absent,
    /// Once, decoded.
    Given(Vec<u8>),
    /// More than once.
    Twice,
}

/// The query parameter `token`, decoded as a browser's `URLSearchParams`
/// decodes it (the page reads its token so, and the two must agree):
/// `%XX` escapes, and `+` for a space (which no token holds, so a raw
/// `+` fails here as it would on the page's own requests).
pub(super) fn token_param(query: &str) -> Param {
    let mut found = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("token="));
    let Some(raw) = found.next() else {
        return Param::Absent;
    };
    if found.next().is_some() {
        return Param::Twice;
    }
    match percent_decode(raw) {
        Some(v) => Param::Given(v),
        None => Param::Absent,
    }
}

/// `token` as the value of the query parameter `token`, so that the
/// page's `URLSearchParams` (and [`token_param`]) decode it back: every
/// byte but a letter, a digit and `-._~` becomes `%XX` (so `+` is `%2B`,
/// never read as a space, and `&`, `#` and `%` cannot end or break the
/// parameter).
pub fn token_query(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `raw` with `%XX` and `+` decoded; `None` for a bad escape.
fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(same(&digest(b"secret"), &digest(b"secret")));
        assert!(!same(&digest(b"secret"), &digest(b"secreT")));
        assert!(!same(&digest(b""), &digest(b"secret")));
    }

    #[test]
    fn a_token_file_is_read_up_to_its_bound() {
        let dir = std::env::temp_dir().join(format!("allot-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, " s3cret\n").unwrap();
        assert_eq!(read_token(&file).ok().as_deref(), Some("s3cret"));
        std::fs::write(&file, "a".repeat(MAX_TOKEN as usize + 1)).unwrap();
        let e = read_token(&file).unwrap_err().to_string();
        assert!(e.contains("more than the 4096 bytes"), "{e}");
        std::fs::write(&file, " \n\t").unwrap();
        let e = read_token(&file).unwrap_err().to_string();
        assert!(e.ends_with("the file is empty"), "{e}");
        std::fs::write(&file, b"\xff\xfe").unwrap();
        let e = read_token(&file).unwrap_err().to_string();
        assert!(e.contains("visible ASCII"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        // A device without a size, endless: refused, not read forever.
        let e = read_token(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("more than the 4096 bytes"), "{e}");
    }

    #[test]
    fn the_token_parameter_is_decoded_as_a_browser_does() {
        let given = |s: &[u8]| Param::Given(s.to_vec());
        assert_eq!(token_param("token=abc"), given(b"abc"));
        assert_eq!(token_param("x=1&token=a%2Bb%25"), given(b"a+b%"));
        assert_eq!(token_param("token=a+b"), given(b"a b"));
        assert_eq!(token_param("x=1"), Param::Absent);
        assert_eq!(token_param("xtoken=1"), Param::Absent);
        assert_eq!(token_param("token=a%2"), Param::Absent);
        assert_eq!(token_param("token=a%zz"), Param::Absent);
        assert_eq!(token_param("token="), given(b""));
        assert_eq!(token_param("token=a&token=a"), Param::Twice);
        assert_eq!(token_param("token=a&x=1&token=%zz"), Param::Twice);
    }

    #[test]
    fn a_token_put_in_a_query_decodes_back_to_itself() {
        let every: String = (b'!'..=b'~').map(char::from).collect();
        for token in [every.as_str(), "s3cret", "a+b", "%25", "a&token=b#c"] {
            let q = token_query(token);
            assert!(
                q.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
                "{q}"
            );
            let query = format!("x=1&token={q}");
            assert_eq!(token_param(&query), Param::Given(token.as_bytes().to_vec()));
        }
        assert_eq!(token_query("a+b/%"), "a%2Bb%2F%25");
    }
}
