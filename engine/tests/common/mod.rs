//! Helpers shared by the integration tests.
#![allow(dead_code)]

use allot_engine::*;

pub fn server(name: &str, slots: u32, power: f64, apps: &[&str], region: &str) -> ServerRecord {
    ServerRecord {
        name: name.into(),
        slots,
        slots_free: slots,
        cores: 8,
        power,
        idle_power: power,
        mem: 16 << 30,
        mem_free: 16 << 30,
        load: 0.5,
        apps: apps.iter().map(|s| s.to_string()).collect(),
        labels: vec![("region".into(), LabelValue::Str(region.into()))],
    }
}

pub fn env(app: &str) -> Env {
    let mut e = Env::default();
    e.task.app = app.into();
    e.task.slots = 1;
    e
}

pub fn table() -> ServerTable {
    ServerTable::new(TableConfig {
        shards: 2,
        capacity: 1024,
    })
    .unwrap()
}
