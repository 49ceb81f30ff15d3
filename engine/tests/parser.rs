//! Parser and compiler: good expressions compile; every bad one gives the
//! exact message and column checked here.

mod common;
use allot_engine::*;
use common::*;

fn ctx() -> (ServerTable, Env) {
    let t = table();
    let mut e = env("echo");
    e.task.cores = 2;
    e.task.extra.push(("deadline".into(), LabelValue::Num(5.0)));
    e.user = UserRecord::new("alice");
    e.user.allowed_apps = vec!["echo".into()];
    e.client
        .push(("region".into(), LabelValue::Str("eu".into())));
    (t, e)
}

#[test]
fn good_expressions_compile() {
    let (t, e) = ctx();
    let good = [
        "true",
        "false || true",
        "\"echo\" in server.apps && server.idle_power >= task.cores && server.region == client.region",
        "server.mem >= 512MiB && server.mem_free > 32GiB && server.mem < 1TiB",
        "task.deadline > 250ms && task.deadline < 2s",
        "!(server.load > 0.9) && -server.power < -1",
        "'echo' in user.allowed_apps",
        "server.gpus == 2 || server.arch != 'arm'",
        "(server.slots_free - task.slots) * 2 / 1 >= 1 + 0",
        "server.a == server.b",
        "server.load <= 1e-3 || 5 > server.cores",
        "user.name == \"alice\" && user.priority == 0 && user.max_in_flight == 0",
        "task.app == 'echo' && task.mem == 0 && task.slots == 1 && task.priority >= 0",
        "server.region == \"it's\" || server.region == 'say \"hi\"' || server.region == 'a\\\\b'",
    ];
    for g in good {
        t.compile(g, "", &e)
            .unwrap_or_else(|err| panic!("{g}: {err}"));
    }
    for p in [
        "server.idle_power - 2 * server.load",
        "1",
        "server.gpus",
        "-server.mem / 1GiB",
    ] {
        t.compile("", p, &e)
            .unwrap_or_else(|err| panic!("{p}: {err}"));
    }
}

fn bad(require: &str) -> (usize, String) {
    let (t, e) = ctx();
    match t.compile(require, "", &e) {
        Ok(q) => panic!("{require:?} compiled to {q:?}"),
        Err(err) => {
            let ExprError::Invalid {
                which,
                column,
                message,
            } = err
            else {
                panic!("{require:?}: {err}")
            };
            assert_eq!(which, Which::Require);
            (column, message)
        }
    }
}

#[test]
fn bad_expressions_name_the_column_and_what_was_expected() {
    let cases: &[(&str, usize, &str)] = &[
        ("server.mem >=", 14, "expected a number, a string, an attribute such as server.mem, true, false or '(', found end of input"),
        ("(server.mem > 1", 16, "expected ')' to close the '(' at column 1, found end of input"),
        ("server.mem > 1 server.load", 16, "unexpected 'server' after a complete expression; expected an operator such as && or ||"),
        ("srv.mem > 1", 1, "unknown name 'srv'; expected server.X, task.X, user.X or client.X, a number, a string, true or false"),
        ("server mem", 8, "expected '.' and an attribute name after 'server', found 'mem'"),
        ("server.'a' > 0", 8, "expected an attribute name after 'server.', found string \"a\""),
        ("server.mem > 5Gb", 15, "unknown unit 'Gb' after number; expected one of B KiB MiB GiB TiB KB MB GB TB us ms s min h"),
        ("server.region == 'eu", 18, "unterminated string: expected a closing ' before the end"),
        ("server.region == 'e\\u'", 20, "unknown escape '\\u' in string; expected \\\\, \\\" or \\'"),
        ("server.mem = 1", 12, "single '=' is not an operator; expected '==' to compare"),
        ("true & false", 6, "single '&'; expected '&&'"),
        ("true | false", 6, "single '|'; expected '||'"),
        ("server.mem > 1 # c", 16, "unexpected character '#'; expected a number, a string, an attribute or an operator"),
        ("1 < server.mem < 3", 16, "comparisons do not chain: found '<' after a comparison; expected && or || between comparisons"),
        ("server.mem", 1, "require must be a condition (true or false), found a number; expected a comparison such as server.mem >= 1GiB"),
        ("(server.mem || true)", 2, "'||' expects a condition (a comparison, true or false), found a number"),
        ("server.mem && true", 1, "require must be a condition (true or false), found a number; expected a comparison such as server.mem >= 1GiB"),
        ("!server.load", 2, "'!' expects a condition (a comparison, true or false), found a number"),
        ("-'a' == 1", 2, "'-' expects a number, found the string \"a\""),
        ("server.region < 'eu'", 17, "strings compare only with == and !=, found '<'"),
        ("server.mem == 'big'", 1, "'==' cannot compare a number with the string \"big\""),
        ("(1 < 2) == true", 1, "'==' compares numbers or strings, found the condition true; combine conditions with && or ||"),
        ("server.apps == 'x'", 1, "'==' cannot compare the list server.apps; test membership with \"app\" in server.apps"),
        ("server.load in server.apps", 1, "left of 'in' expects a string such as \"echo\" or task.app, found a number"),
        ("'x' in server.region", 8, "right of 'in' expects server.apps or user.allowed_apps, found the server label server.region"),
        ("task.nope > 1", 1, "unknown attribute task.nope; expected one of app, cores, mem, slots, priority, deadline"),
        ("user.nope > 1", 1, "unknown attribute user.nope; expected one of name, priority, max_in_flight, allowed_apps"),
        ("client.zone == 'a'", 1, "unknown attribute client.zone: the client did not send it; it sent: region"),
        ("server.mem + 'a' > 1", 14, "'+' expects numbers, found the string \"a\""),
        ("1..2 > 0", 3, "unexpected number 0.2 after a complete expression; expected an operator such as && or ||"),
        ("é > 1", 1, "unexpected character 'é'; expected a number, a string, an attribute or an operator"),
    ];
    let mut wrong = Vec::new();
    for (src, col, msg) in cases {
        let (c, m) = bad(src);
        if (c, m.as_str()) != (*col, *msg) {
            wrong.push(format!("{src:?}: got ({c}, {m:?})"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let src = format!("{}true{}", "(".repeat(100), ")".repeat(100));
    let (c, m) = bad(&src);
    assert_eq!(c, 65);
    assert_eq!(
        m,
        "expression nested too deeply (more than 64 levels); expected a simpler expression"
    );
    let src = format!("{}true", "!".repeat(100));
    let (_, m) = bad(&src);
    assert!(m.starts_with("expression nested too deeply"), "{m}");
}

#[test]
fn prefer_errors_say_prefer() {
    let (t, e) = ctx();
    let err = t.compile("", "server.load > 1", &e).unwrap_err();
    assert_eq!(
        err.to_string(),
        "prefer, column 1: prefer must be a number to maximise, found a condition"
    );
    let err = t.compile("", "'a'", &e).unwrap_err();
    assert_eq!(err.column(), Some(1));
    assert_eq!(
        err.message(),
        "prefer must be a number to maximise, found the string \"a\""
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let (c, _) = bad("server.region == 'ü' && 1");
    assert_eq!(c, 25);
}

#[test]
fn user_defaults_apply_when_the_task_gives_none() {
    let (t, mut e) = ctx();
    e.user.default_require = "server.load < 0.7".into();
    e.user.default_prefer = "server.power".into();
    let q = t.compile("", "", &e).unwrap();
    assert_eq!(q.require_text(), "server.load < 0.7");
    assert_eq!(q.prefer_text(), "server.power");
    e.user.default_prefer.clear();
    let q = t.compile("server.load < 0.2", "  ", &e).unwrap();
    assert_eq!(q.require_text(), "server.load < 0.2");
    assert_eq!(q.prefer_text(), DEFAULT_PREFER);
    assert_eq!(
        q.clause_names(),
        vec![
            "user \"alice\" may run app \"echo\" (user.allowed_apps)",
            "server is up (not down or draining)",
            "app \"echo\" installed (task.app in server.apps)",
            "server.load < 0.2",
            "slots_free >= 1 (task.slots)",
            "cores_free >= 2 (task.cores)",
        ]
    );
}
