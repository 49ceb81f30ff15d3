//! The user and task-class DBs survive reopening; damaged, foreign or
//! wrong-version files give clear errors, never panics.

use std::time::Duration;

use allot_engine::*;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("allot-engine-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn users_and_classes_survive_reopen() {
    let dir = tmp("reopen");
    let alice = UserRecord {
        name: "alice".into(),
        priority: 5,
        max_in_flight: 100,
        allowed_apps: vec!["echo".into()],
        default_require: "server.region == 'eu'".into(),
        default_prefer: "server.power".into(),
    };
    {
        let s = Store::open(&dir).unwrap();
        let users = s.users();
        users.put(&alice).unwrap();
        users.put(&UserRecord::new("bob")).unwrap();
        users.put(&UserRecord::new("zed")).unwrap();
        assert!(users.remove("zed").unwrap());
        assert!(!users.remove("zed").unwrap());
        let classes = s.task_classes();
        let mut c = TaskClass::new("echo");
        c.default_cores = 2;
        c.default_mem = 1 << 30;
        c.default_slots = 1;
        classes.put(&c).unwrap();
        classes
            .record_completion("echo", Duration::from_millis(100), true)
            .unwrap();
        classes
            .record_completion("echo", Duration::from_millis(300), true)
            .unwrap();
        let c = classes
            .record_completion("echo", Duration::from_millis(900), false)
            .unwrap();
        assert_eq!((c.runs, c.failures), (2, 1));
        classes
            .record_completions(&[
                ("sum", Duration::from_secs(1), true),
                ("sum", Duration::from_secs(3), true),
            ])
            .unwrap();
    }
    let s = Store::open(&dir).unwrap();
    assert_eq!(s.users().get("alice").unwrap(), Some(alice));
    assert_eq!(s.users().get("nobody").unwrap(), None);
    let names: Vec<String> = s
        .users()
        .list()
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, vec!["alice", "bob"]);
    let echo = s.task_classes().get("echo").unwrap().unwrap();
    assert_eq!(
        (echo.default_cores, echo.default_mem, echo.default_slots),
        (2, 1 << 30, 1)
    );
    assert_eq!((echo.runs, echo.failures), (2, 1));
    assert!((echo.mean - 0.2).abs() < 1e-9);
    assert!((echo.variance() - 0.02).abs() < 1e-9);
    let sum = s.task_classes().get("sum").unwrap().unwrap();
    assert_eq!((sum.runs, sum.mean, sum.variance()), (2, 2.0, 2.0));
    assert_eq!(s.task_classes().list().unwrap().len(), 2);
    drop(s);
    // The single-file constructors open the same file.
    let u = UserDb::open(dir.join(STORE_FILE)).unwrap();
    assert_eq!(u.list().unwrap().len(), 2);
    drop(u);
    let c = TaskClassDb::open(dir.join(STORE_FILE)).unwrap();
    assert_eq!(c.list().unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_and_truncated_files_are_errors() {
    let dir = tmp("garbage");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(STORE_FILE);
    let patterns: Vec<Vec<u8>> = vec![
        b"this is not a database".to_vec(),
        vec![0u8; 4096],
        vec![0xFFu8; 10000],
        (0..20000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect(),
    ];
    for bytes in patterns {
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(&dir).expect_err("garbage must not open");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
    // A real store cut short.
    std::fs::remove_file(&path).unwrap();
    {
        let s = Store::open(&dir).unwrap();
        for i in 0..50 {
            s.users().put(&UserRecord::new(format!("user{i}"))).unwrap();
        }
    }
    let full = std::fs::read(&path).unwrap();
    for cut in [full.len() / 2, 100, full.len() - 1] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let err = Store::open(&dir).expect_err("a truncated store must not open");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("is damaged"), "{err}");
    }
    // Flipped bytes in the middle.
    let mut flipped = full.clone();
    for b in flipped.iter_mut().skip(full.len() / 3).step_by(97) {
        *b ^= 0x5A;
    }
    std::fs::write(&path, &flipped).unwrap();
    if let Ok(s) = Store::open(&dir) {
        let _ = s.users().list();
        let _ = s.users().get("user7");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_version_and_foreign_files_are_named() {
    let dir = tmp("version");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(STORE_FILE);
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w
                .open_table(redb::TableDefinition::<&str, u64>::new("allot_meta"))
                .unwrap();
            t.insert("version", 99).unwrap();
        }
        w.commit().unwrap();
    }
    let err = Store::open(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongVersion {
                found: 99,
                expected: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("schema version 99, this allot reads version 1"),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w
                .open_table(redb::TableDefinition::<u64, u64>::new("other"))
                .unwrap();
            t.insert(1, 2).unwrap();
        }
        w.commit().unwrap();
    }
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::NotAllotStore { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_record_is_reported_with_its_key() {
    let dir = tmp("record");
    {
        let s = Store::open(&dir).unwrap();
        s.users().put(&UserRecord::new("alice")).unwrap();
    }
    {
        let db = redb::Database::create(dir.join(STORE_FILE)).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("users"))
                .unwrap();
            t.insert("mallory", [1u8, 0xFF, 0xFF, 0xFF, 0x7F].as_slice())
                .unwrap();
        }
        w.commit().unwrap();
    }
    let s = Store::open(&dir).unwrap();
    let err = s.users().get("mallory").unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { table: "users", .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("corrupt record \"mallory\" in table users"),
        "{err}"
    );
    assert!(s.users().list().is_err());
    assert!(s.users().get("alice").unwrap().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
