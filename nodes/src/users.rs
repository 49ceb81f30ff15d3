//! The `--users FILE` of a distributor: users loaded into its user DB.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! priority = 5
//! max_in_flight = 1000
//! allowed_apps = ["echo", "sha256"]
//! default_require = "server.region == 'eu'"
//! default_prefer = "server.idle_power"
//! ```

use allot_engine::UserRecord;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    max_in_flight: u32,
    #[serde(default)]
    allowed_apps: Vec<String>,
    #[serde(default)]
    default_require: String,
    #[serde(default)]
    default_prefer: String,
}

/// Reads a users file. The error names the line and the key (toml's
/// message does), and the caller prefixes the path.
pub fn load_users_file(path: &std::path::Path) -> Result<Vec<UserRecord>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_users(&text)
}

/// Parses the text of a users file.
pub fn parse_users(text: &str) -> Result<Vec<UserRecord>, String> {
    let f: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(f.user
        .into_iter()
        .map(|u| UserRecord {
            name: u.name,
            priority: u.priority,
            max_in_flight: u.max_in_flight,
            allowed_apps: u.allowed_apps,
            default_require: u.default_require,
            default_prefer: u.default_prefer,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_and_typos_name_line_and_key() {
        let u = parse_users(
            "[[user]]\nname = \"alice\"\nmax_in_flight = 3\nallowed_apps = [\"echo\"]\n",
        )
        .unwrap();
        assert_eq!(u[0].name, "alice");
        assert_eq!(u[0].max_in_flight, 3);
        assert!(u[0].may_run("echo") && !u[0].may_run("sleep"));
        let err = parse_users("[[user]]\nname = \"bob\"\nmax_inflight = 3\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("max_inflight"), "{err}");
    }
}
