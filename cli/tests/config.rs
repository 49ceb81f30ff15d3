//! `--config FILE` merged into clap arguments, against a small command built
//! here (independent of the real CLI).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use allot_cli::config::{merge_config, ConfigError};
use clap::{Arg, ArgAction, ArgMatches, Command};

/// `allot` with a `distributor` subcommand shaped like a node's flags.
fn cli() -> Command {
    Command::new("allot")
        .arg(
            Arg::new("verbose")
                .short('v')
                .long("verbose")
                .action(ArgAction::Count)
                .global(true),
        )
        .subcommand(
            Command::new("distributor")
                .arg(Arg::new("config").long("config").value_name("FILE"))
                .arg(Arg::new("name").long("name").required(true))
                .arg(
                    Arg::new("listen")
                        .short('l')
                        .long("listen")
                        .default_value("127.0.0.1:7000"),
                )
                .arg(Arg::new("data-dir").long("data-dir"))
                .arg(
                    Arg::new("max-inflight")
                        .long("max-inflight")
                        .value_parser(clap::value_parser!(u32)),
                )
                .arg(
                    Arg::new("ratio")
                        .long("ratio")
                        .value_parser(clap::value_parser!(f64)),
                )
                .arg(
                    Arg::new("mode")
                        .long("mode")
                        .value_parser(["registered", "broadcast"]),
                )
                .arg(
                    Arg::new("broadcast")
                        .long("broadcast")
                        .action(ArgAction::SetTrue),
                )
                .arg(Arg::new("set").long("set").action(ArgAction::Append))
                .arg(
                    Arg::new("apps")
                        .long("apps")
                        .value_delimiter(',')
                        .action(ArgAction::Set),
                )
                .arg(Arg::new("peers").long("peers").num_args(1..)),
        )
        .subcommand(Command::new("version"))
}

/// A config file with `text`, removed on drop.
struct File(PathBuf);

impl File {
    fn new(text: &str) -> File {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "allot-config-test-{}-{}.toml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        File(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Merges and parses, returning the distributor's matches.
fn parse(args: &[&str]) -> Result<ArgMatches, ConfigError> {
    let merged = merge_config(&cli(), argv(args))?;
    let matches = cli().try_get_matches_from(merged).unwrap();
    Ok(matches.subcommand_matches("distributor").unwrap().clone())
}

fn strings(m: &ArgMatches, id: &str) -> Vec<String> {
    m.get_many::<String>(id)
        .map(|v| v.cloned().collect())
        .unwrap_or_default()
}

#[test]
fn file_values_are_applied() {
    let file = File::new(
        r#"
name = "d1"
listen = "0.0.0.0:7100"
data_dir = "/var/lib/allot"
max_inflight = 64
ratio = 0.5
mode = "broadcast"
broadcast = true
"#,
    );
    let m = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap();
    assert_eq!(m.get_one::<String>("name").unwrap(), "d1");
    assert_eq!(m.get_one::<String>("listen").unwrap(), "0.0.0.0:7100");
    assert_eq!(m.get_one::<String>("data-dir").unwrap(), "/var/lib/allot");
    assert_eq!(*m.get_one::<u32>("max-inflight").unwrap(), 64);
    assert_eq!(*m.get_one::<f64>("ratio").unwrap(), 0.5);
    assert_eq!(m.get_one::<String>("mode").unwrap(), "broadcast");
    assert!(m.get_flag("broadcast"));
}

#[test]
fn false_switch_and_global_count() {
    let file = File::new("name = \"d1\"\nbroadcast = false\nverbose = 2\n");
    let merged = merge_config(
        &cli(),
        argv(&["allot", "distributor", &format!("--config={}", file.arg())]),
    )
    .unwrap();
    let m = cli().try_get_matches_from(merged).unwrap();
    let d = m.subcommand_matches("distributor").unwrap();
    assert!(!d.get_flag("broadcast"));
    assert_eq!(d.get_count("verbose"), 2);
}

#[test]
fn command_line_overrides_file() {
    let file = File::new(
        "name = \"from-file\"\nlisten = \"0.0.0.0:1\"\nset = [\"a=1\", \"b=2\"]\nverbose = 3\n",
    );
    let m = parse(&[
        "allot",
        "-v",
        "distributor",
        "--name",
        "from-cli",
        "-l0.0.0.0:2",
        "--set=c=3",
        "--config",
        &file.arg(),
    ])
    .unwrap();
    assert_eq!(m.get_one::<String>("name").unwrap(), "from-cli");
    assert_eq!(m.get_one::<String>("listen").unwrap(), "0.0.0.0:2");
    // CLI occurrences of a repeatable flag replace the file's.
    assert_eq!(strings(&m, "set"), ["c=3"]);
    // A global flag given before the subcommand also wins.
    assert_eq!(m.get_count("verbose"), 1);
}

#[test]
fn repeatable_and_list_flags_take_arrays() {
    let file = File::new(
        r#"name = "d1"
set = ["region=eu", "gpu=none"]
apps = ["echo", "sleep"]
peers = ["10.0.0.1:7000", "10.0.0.2:7000"]
"#,
    );
    let m = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap();
    assert_eq!(strings(&m, "set"), ["region=eu", "gpu=none"]);
    assert_eq!(strings(&m, "apps"), ["echo", "sleep"]);
    assert_eq!(strings(&m, "peers"), ["10.0.0.1:7000", "10.0.0.2:7000"]);

    // A comma list may also be a string; a repeatable flag a single value.
    let file = File::new("name = \"d1\"\napps = \"echo,sleep\"\nset = \"region=eu\"\n");
    let m = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap();
    assert_eq!(strings(&m, "apps"), ["echo", "sleep"]);
    assert_eq!(strings(&m, "set"), ["region=eu"]);
}

#[test]
fn unknown_key_names_file_line_key_and_suggestion() {
    let file = File::new("name = \"d1\"\n\n# the directory\ndata-dri = \"/tmp\"\n");
    let err = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap_err();
    match &err {
        ConfigError::UnknownKey {
            line,
            key,
            suggestion,
            ..
        } => {
            assert_eq!(*line, 4);
            assert_eq!(key, "data-dri");
            assert_eq!(suggestion.as_deref(), Some("data_dir"));
        }
        other => panic!("expected an unknown key error, got {other}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "{}:4: unknown key `data-dri` for `allot distributor` (did you mean `data_dir`?)",
            file.arg()
        )
    );

    // Nothing close: no suggestion.
    let file = File::new("completely_unrelated = 1\n");
    let err = parse(&["allot", "distributor", "--config", &file.arg()])
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("unknown key `completely_unrelated` for `allot distributor`"),
        "{err}"
    );
}

#[test]
fn bad_type_names_file_line_and_key() {
    let file = File::new("name = \"d1\"\nlisten = { host = \"x\" }\n");
    let err = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap_err();
    assert!(matches!(err, ConfigError::BadType { line: 2, .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:2: `listen`", file.arg())),
        "{text}"
    );
    assert!(text.contains("a table"), "{text}");

    let file = File::new("name = \"d1\"\nbroadcast = \"yes\"\n");
    let err = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap_err();
    assert!(matches!(err, ConfigError::BadType { line: 2, .. }), "{err}");

    let file = File::new("name = [\"a\", \"b\"]\n");
    let err = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap_err();
    assert!(matches!(err, ConfigError::BadType { line: 1, .. }), "{err}");
}

#[test]
fn bad_value_is_reported_against_the_file() {
    let file = File::new("name = \"d1\"\nmax_inflight = -3\nmode = \"broadcast\"\n");
    let err = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap_err();
    assert!(
        matches!(err, ConfigError::BadValue { line: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("max_inflight"), "{err}");

    let file = File::new("name = \"d1\"\nmode = \"everywhere\"\n");
    let err = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap_err();
    assert!(
        matches!(err, ConfigError::BadValue { line: 2, .. }),
        "{err}"
    );
}

#[test]
fn toml_syntax_error_names_line() {
    let file = File::new("name = \"d1\"\nlisten = \n");
    let err = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap_err();
    match &err {
        ConfigError::Syntax { line, column, .. } => {
            assert_eq!(*line, 2);
            assert!(*column >= 9, "{err}");
        }
        other => panic!("expected a syntax error, got {other}"),
    }
    assert!(
        err.to_string().starts_with(&format!("{}:2:", file.arg())),
        "{err}"
    );

    let file = File::new("name = \"d1\"\nname = \"d2\"\n");
    let err = parse(&["allot", "distributor", "--config", &file.arg()]).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{err}");
}

#[test]
fn missing_file_is_named() {
    let err = parse(&[
        "allot",
        "distributor",
        "--config",
        "/nonexistent/allot.toml",
    ])
    .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/allot.toml"), "{err}");
}

#[test]
fn without_config_argv_is_unchanged() {
    let args = argv(&["allot", "distributor", "--name", "d1"]);
    assert_eq!(merge_config(&cli(), args.clone()).unwrap(), args);
    let args = argv(&["allot", "version"]);
    assert_eq!(merge_config(&cli(), args.clone()).unwrap(), args);
    // After `--`, `--config` is a plain value, not our flag.
    let args = argv(&[
        "allot",
        "distributor",
        "--name",
        "d1",
        "--",
        "--config",
        "x",
    ]);
    assert_eq!(merge_config(&cli(), args.clone()).unwrap(), args);
}
