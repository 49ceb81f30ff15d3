//! `--config FILE`: node flags from a TOML file.
//!
//! Every flag of a subcommand may also be given as a top-level key of the same
//! name, dashes written as underscores (`data_dir = "..."` for `--data-dir`),
//! in a TOML file passed with `--config FILE`; flags on the command line win
//! over the file. [`merge_config`] does this before clap parses anything: it
//! turns the file into extra arguments placed right after the subcommand
//! name, leaving out every flag that the command line already sets, so clap
//! alone still does all parsing, defaults and validation, and `--help` shows
//! one set of flags.
//!
//! Mistakes are reported with the file, line and key (`FILE:LINE: unknown key
//! `foo` for `allot distributor` (did you mean `bar`?)`), since a typo in a
//! config file otherwise shows up as a puzzling default value much later.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Command};
use toml::{Spanned, Value};

/// The long name of the flag that names the config file.
pub const CONFIG_FLAG: &str = "config";

/// A config file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What the TOML parser says.
        message: String,
    },
    /// A key that names no flag of the subcommand.
    #[error("{}:{line}: unknown key `{key}` for `{command}`{}", path.display(), Suggestion(suggestion))]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
        /// The key as written.
        key: String,
        /// The subcommand, e.g. `allot distributor`.
        command: String,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong TOML type for its flag.
    #[error("{}:{line}: `{key}` must be {expected}, found {found}", path.display())]
    BadType {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value.
        line: usize,
        /// The key.
        key: String,
        /// What the flag takes.
        expected: &'static str,
        /// What the file has.
        found: &'static str,
    },
    /// A value the flag's own parser rejects (not a number, not one of the
    /// allowed values...), or a key that may not appear in a file.
    #[error("{}:{line}: `{key}`: {message}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong, in clap's words.
        message: String,
    },
}

/// Formats the optional "did you mean" tail of an unknown-key error.
struct Suggestion<'a>(&'a Option<String>);

impl fmt::Display for Suggestion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, " (did you mean `{s}`?)"),
            None => Ok(()),
        }
    }
}

/// Returns `argv` with the values of the `--config FILE` given to the
/// subcommand in `argv` added as arguments, minus those the command line
/// sets itself. Without `--config` (or for a subcommand that has no
/// `--config` flag) `argv` comes back unchanged. `argv[0]` is the program.
///
/// Values become arguments by the flag's clap action: a boolean switch
/// (`SetTrue`/`SetFalse`) is given when the key is `true`; a counted flag is
/// repeated; a value flag gets `--flag=value` (strings, integers, floats,
/// booleans, dates); an array is one occurrence per element for a repeatable
/// flag (`Append`), or joined with the flag's delimiter for a comma-list flag
/// (so `apps = ["a", "b"]` and `apps = "a,b"` are the same). For a repeatable
/// flag, occurrences on the command line replace the file's entirely.
pub fn merge_config(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    if argv.is_empty() {
        return Ok(argv);
    }
    let mut root = cmd.clone();
    // Building fills in what introspection needs: propagated global flags,
    // default actions and value counts.
    root.build();

    // Find the (deepest) subcommand named in argv.
    let mut sub: &Command = &root;
    let mut path = vec![root.get_name().to_string()];
    let mut sub_pos = 0;
    for (i, token) in argv.iter().enumerate().skip(1) {
        if token == "--" {
            break;
        }
        if token.to_str().is_some_and(|t| t.starts_with('-')) {
            continue;
        }
        if let Some(found) = sub.find_subcommand(token) {
            sub = found;
            path.push(found.get_name().to_string());
            sub_pos = i;
        }
    }
    let Some(config_arg) = sub
        .get_arguments()
        .find(|a| a.get_long() == Some(CONFIG_FLAG))
    else {
        return Ok(argv);
    };

    let given = scan(sub, &argv[1..]);
    let Some(file) = given
        .iter()
        .rev()
        .find(|(id, _)| *id == config_arg.get_id().as_str())
        .and_then(|(_, value)| value.clone())
    else {
        return Ok(argv);
    };
    let file = PathBuf::from(file);
    let on_cli: HashSet<&str> = given.iter().map(|(id, _)| id.as_str()).collect();

    let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
        path: file.clone(),
        source,
    })?;
    let lines = Lines::new(&text);
    let entries = toml::from_str::<SpannedTable>(&text)
        .map(|t| t.0)
        .map_err(|e| {
            let (line, column) = lines.locate(e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                path: file.clone(),
                line,
                column,
                message: one_line(e.message()),
            }
        })?;

    let command = path.join(" ");
    let mut extra: Vec<OsString> = Vec::new();
    // Which flag each emitted key belongs to, to point clap's value errors
    // back at the file.
    let mut from_file: Vec<(&Arg, &str, usize)> = Vec::new();
    for (key, value) in &entries {
        let key_line = lines.locate(key.span().start).0;
        let value_line = lines.locate(value.span().start).0;
        if key.get_ref() == CONFIG_FLAG {
            return Err(ConfigError::BadValue {
                path: file.clone(),
                line: key_line,
                key: key.get_ref().clone(),
                message: "a config file cannot name another config file".into(),
            });
        }
        let Some(arg) = settable(sub).find(|a| key_of(a).as_deref() == Some(key.get_ref())) else {
            return Err(ConfigError::UnknownKey {
                path: file.clone(),
                line: key_line,
                key: key.get_ref().clone(),
                command,
                suggestion: suggest(key.get_ref(), settable(sub).filter_map(key_of)),
            });
        };
        if on_cli.contains(arg.get_id().as_str()) {
            continue;
        }
        let bad_type = |expected| ConfigError::BadType {
            path: file.clone(),
            line: value_line,
            key: key.get_ref().clone(),
            expected,
            found: type_name(value.get_ref()),
        };
        to_args(arg, value.get_ref(), &mut extra).map_err(bad_type)?;
        from_file.push((arg, key.get_ref(), value_line));
    }

    let mut merged = Vec::with_capacity(argv.len() + extra.len());
    merged.extend_from_slice(&argv[..=sub_pos]);
    merged.extend(extra);
    merged.extend_from_slice(&argv[sub_pos + 1..]);

    // Let clap check the file's values now, while we still know which line
    // they came from; any other problem is left for the real parse to report.
    if let Err(e) = root.clone().try_get_matches_from(&merged) {
        if matches!(
            e.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        ) {
            if let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) {
                if let Some((_, key, line)) = from_file.iter().find(|(a, _, _)| names(a, shown)) {
                    return Err(ConfigError::BadValue {
                        path: file,
                        line: *line,
                        key: key.to_string(),
                        message: one_line(&e.to_string()),
                    });
                }
            }
        }
    }
    Ok(merged)
}

/// A multi-line message from clap or toml on one line, without clap's
/// `error: ` prefix and `For more information, try '--help'` tip.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(|l| l.trim().trim_start_matches("error: "))
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The top-level table with the spans of keys and values.
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct SpannedTable(#[serde(with = "spanned_entries")] Vec<(Spanned<String>, Spanned<Value>)>);

/// Deserializes a map into its entries in file order (a `Vec` keeps the
/// order; `Spanned<String>` keys are not `Ord`-friendly for a map).
mod spanned_entries {
    use serde::de::{Deserializer, MapAccess, Visitor};
    use std::fmt;
    use toml::{Spanned, Value};

    type Entries = Vec<(Spanned<String>, Spanned<Value>)>;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Args a file may set: those with a long name, other than help and version.
fn settable(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        a.get_long().is_some()
            && a.get_long() != Some(CONFIG_FLAG)
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// The file key of an arg: its long name with dashes as underscores.
fn key_of(arg: &Arg) -> Option<String> {
    arg.get_long().map(|l| l.replace('-', "_"))
}

/// Whether clap's rendering of an arg in an error (`--port <PORT>`) is `arg`.
fn names(arg: &Arg, shown: &str) -> bool {
    let Some(long) = arg.get_long() else {
        return false;
    };
    shown
        .strip_prefix("--")
        .and_then(|s| s.strip_prefix(long))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '=']))
}

/// Whether an arg consumes values (as opposed to a switch or counter).
fn takes_value(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Set | ArgAction::Append)
}

/// Most values one occurrence of `arg` takes.
fn max_values(arg: &Arg) -> usize {
    arg.get_num_args().map_or(1, |r| r.max_values())
}

/// The flags given in `tokens` (argv without the program), as
/// `(arg id, first value)`, in order. Only `cmd`'s flags are recognised;
/// scanning stops at `--`.
fn scan(cmd: &Command, tokens: &[OsString]) -> Vec<(String, Option<OsString>)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let Some(token) = tokens[i].to_str() else {
            i += 1;
            continue;
        };
        if token == "--" {
            break;
        }
        if let Some(rest) = token.strip_prefix("--") {
            let (name, inline) = match rest.split_once('=') {
                Some((n, v)) => (n, Some(OsString::from(v))),
                None => (rest, None),
            };
            if let Some(arg) = cmd.get_arguments().find(|a| {
                a.get_long() == Some(name)
                    || a.get_all_aliases().is_some_and(|al| al.contains(&name))
            }) {
                let value = match inline {
                    Some(v) => Some(v),
                    None if takes_value(arg) => {
                        let n = value_count(arg, &tokens[i + 1..]);
                        let first = tokens.get(i + 1).filter(|_| n > 0).cloned();
                        i += n;
                        first
                    }
                    None => None,
                };
                found.push((arg.get_id().to_string(), value));
            }
        } else if token.len() > 1 && token.starts_with('-') {
            // A cluster of short flags: `-vv`, `-p8080`, `-p 8080`.
            for (at, c) in token.char_indices().skip(1) {
                let Some(arg) = cmd.get_arguments().find(|a| {
                    a.get_short() == Some(c)
                        || a.get_all_short_aliases().is_some_and(|al| al.contains(&c))
                }) else {
                    break;
                };
                if !takes_value(arg) {
                    found.push((arg.get_id().to_string(), None));
                    continue;
                }
                let attached = &token[at + c.len_utf8()..];
                let value = if attached.is_empty() {
                    let n = value_count(arg, &tokens[i + 1..]);
                    let first = tokens.get(i + 1).filter(|_| n > 0).cloned();
                    i += n;
                    first
                } else {
                    Some(OsString::from(attached.trim_start_matches('=')))
                };
                found.push((arg.get_id().to_string(), value));
                break;
            }
        }
        i += 1;
    }
    found
}

/// How many of `rest` are values of a value-taking `arg` written without `=`.
fn value_count(arg: &Arg, rest: &[OsString]) -> usize {
    let max = max_values(arg).max(1);
    let is_value = |t: &OsString| t.to_str().is_none_or(|s| !s.starts_with('-') || s == "-");
    if max == 1 {
        return usize::from(!rest.is_empty());
    }
    rest.iter().take(max).take_while(|t| is_value(t)).count()
}

/// Appends the arguments for `value` of `arg`; on a type mismatch returns
/// what the flag expects.
fn to_args(arg: &Arg, value: &Value, out: &mut Vec<OsString>) -> Result<(), &'static str> {
    let Some(long) = arg.get_long() else {
        return Err("nothing (not settable from a file)");
    };
    let flag = format!("--{long}");
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            Value::Boolean(true) => out.push(flag.into()),
            Value::Boolean(false) => {}
            _ => return Err("true or false"),
        },
        ArgAction::Count => match value {
            Value::Boolean(b) => out.extend((*b).then(|| flag.into())),
            Value::Integer(n) if (0..=255).contains(n) => {
                out.extend(std::iter::repeat_n(OsString::from(&flag), *n as usize))
            }
            _ => return Err("a count (an integer from 0 to 255, or true/false)"),
        },
        ArgAction::Append => match value {
            Value::Array(items) => {
                for item in items {
                    let v = scalar(item).ok_or("a value or an array of values")?;
                    out.push(format!("{flag}={v}").into());
                }
            }
            other => {
                let v = scalar(other).ok_or("a value or an array of values")?;
                out.push(format!("{flag}={v}").into());
            }
        },
        _ => match value {
            Value::Array(items) => {
                let values = items
                    .iter()
                    .map(scalar)
                    .collect::<Option<Vec<_>>>()
                    .ok_or("an array of plain values")?;
                if let Some(sep) = arg.get_value_delimiter() {
                    if !values.is_empty() {
                        out.push(format!("{flag}={}", values.join(&sep.to_string())).into());
                    }
                } else if max_values(arg) > 1 {
                    if !values.is_empty() {
                        out.push(flag.into());
                        out.extend(values.into_iter().map(OsString::from));
                    }
                } else {
                    return Err("a single value");
                }
            }
            other => {
                let v = scalar(other).ok_or("a value (string, number or boolean)")?;
                out.push(format!("{flag}={v}").into());
            }
        },
    }
    Ok(())
}

/// A plain TOML value as command-line text; `None` for arrays and tables.
fn scalar(value: &Value) -> Option<String> {
    Some(match value {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(_) | Value::Table(_) => return None,
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The known key closest to `key`, if it is close enough to be a typo.
fn suggest(key: &str, known: impl Iterator<Item = String>) -> Option<String> {
    let normalized = key.replace('-', "_");
    known
        .map(|k| (edit_distance(&normalized, &k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Byte offset → (line, column), both 1-based.
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { text, starts }
    }

    fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }
}

/// Convenience for `main`: [`merge_config`] over the process arguments.
pub fn merge_env_args(cmd: &Command) -> Result<Vec<OsString>, ConfigError> {
    merge_config(cmd, std::env::args_os().collect())
}
