//! Random server tables for the engine's benches and examples, so that
//! every figure is measured on the same records and query.
//!
//! A table is drawn from a fixed seed with a xorshift generator ([`Rng`]),
//! one [`ServerRecord`] per server ([`Records::record`]): `echo` on half the
//! servers, a region out of [`REGIONS`], idle power in `0..100`, load in
//! `0..1`, 16 to 255 GiB of memory with half to all of it free, and eight
//! free slots. The query the benches time is [`REQUIRE`] and [`PREFER`]
//! with the task of [`env`]: about a tenth of the servers pass.
//!
//! Not part of the engine's API: hidden from its docs, and changed with the
//! benches that use it.

use crate::error::EngineError;
use crate::schema::{Env, LabelValue, ServerRecord};
use crate::table::{ServerTable, TableConfig};

/// The seed every fixture table is drawn from.
pub const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// The regions servers are drawn in.
pub const REGIONS: [&str; 4] = ["eu", "us", "asia", "sa"];

/// Three clauses plus the implicit ones (up, app, free slots).
pub const REQUIRE: &str =
    "server.region == client.region && server.load < 0.8 && server.mem_free >= 8GiB";

/// A sum of weighted columns.
pub const PREFER: &str = "server.idle_power - 2 * server.load";

/// [`PREFER`] with the same value for every server, in a shape that is not a
/// sum of weighted columns (`x + 0` is `x`): a general expression, bounded
/// per block by interval arithmetic and scored by the register program.
pub const PREFER_GENERAL: &str = "server.idle_power - (2 * server.load + 0)";

/// xorshift64: cheap, and the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator at [`SEED`].
    pub fn new() -> Rng {
        Rng(SEED)
    }

    /// The next draw.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let s = &mut self.0;
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }
}

impl Default for Rng {
    fn default() -> Rng {
        Rng::new()
    }
}

/// How servers are drawn. The benches and `scan_rate` share [`Records::BENCH`];
/// the profiling and scaling examples draw in the order their recorded
/// figures were taken with, so those stay comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Records {
    /// Whether a quarter of the servers also get the `sum` app.
    pub sum_app: bool,
    /// Whether `power` is drawn (in `0..100`) rather than 1.
    pub power: bool,
    /// Whether memory is drawn before the apps rather than after.
    pub mem_first: bool,
    /// Names are `w0000042` rather than `w42`.
    pub wide_names: bool,
}

impl Records {
    /// The benches' table (`benches/engine.rs`, `scan_rate`).
    pub const BENCH: Records = Records {
        sum_app: true,
        power: true,
        mem_first: false,
        wide_names: true,
    };

    /// `scan_profile`'s table.
    pub const PROFILE: Records = Records {
        sum_app: false,
        power: true,
        mem_first: true,
        wide_names: false,
    };

    /// `scaling`'s table.
    pub const SCALING: Records = Records {
        sum_app: false,
        power: false,
        mem_first: true,
        wide_names: false,
    };

    /// Server `i`, drawn from `r`.
    pub fn record(&self, i: usize, r: &mut Rng) -> ServerRecord {
        let mut mem = 0;
        if self.mem_first {
            mem = (16 + r.next() % 240) << 30;
        }
        let mut apps = Vec::new();
        if r.next() % 2 == 0 {
            apps.push("echo".to_string());
        }
        if self.sum_app && r.next() % 4 == 0 {
            apps.push("sum".to_string());
        }
        if !self.mem_first {
            mem = (16 + r.next() % 240) << 30;
        }
        ServerRecord {
            name: if self.wide_names {
                format!("w{i:07}")
            } else {
                format!("w{i}")
            },
            slots: 8,
            slots_free: 8,
            cores: 16,
            power: if self.power {
                (r.next() % 1000) as f64 / 10.0
            } else {
                1.0
            },
            idle_power: (r.next() % 1000) as f64 / 10.0,
            mem,
            mem_free: mem / 2 + (r.next() % (mem / 2)),
            load: (r.next() % 100) as f64 / 100.0,
            apps,
            labels: vec![(
                "region".to_string(),
                LabelValue::Str(REGIONS[(r.next() % 4) as usize].to_string()),
            )],
        }
    }
}

/// An empty table of four shards for `n` servers.
pub fn table(n: usize) -> Result<ServerTable, EngineError> {
    ServerTable::new(TableConfig {
        shards: 4,
        capacity: n,
    })
}

/// The task the benches match: one slot of `echo`, from a client in `eu`.
pub fn env() -> Env {
    let mut env = Env::default();
    env.task.app = "echo".into();
    env.task.slots = 1;
    env.client
        .push(("region".into(), LabelValue::Str("eu".into())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The draws the bench's records were written with, one by one.
    #[test]
    fn bench_records_draw_in_the_benchs_order() {
        let (mut a, mut b) = (Rng::new(), Rng::new());
        for i in 0..100 {
            let rec = Records::BENCH.record(i, &mut a);
            let echo = b.next() % 2 == 0;
            let sum = b.next() % 4 == 0;
            let mem = (16 + b.next() % 240) << 30;
            assert_eq!(rec.apps.contains(&"echo".to_string()), echo);
            assert_eq!(rec.apps.contains(&"sum".to_string()), sum);
            assert_eq!(rec.mem, mem);
            assert_eq!(rec.power, (b.next() % 1000) as f64 / 10.0);
            assert_eq!(rec.idle_power, (b.next() % 1000) as f64 / 10.0);
            assert_eq!(rec.mem_free, mem / 2 + (b.next() % (mem / 2)));
            assert_eq!(rec.load, (b.next() % 100) as f64 / 100.0);
            let region = REGIONS[(b.next() % 4) as usize];
            assert_eq!(rec.labels[0].1, LabelValue::Str(region.into()));
            assert_eq!(rec.name, format!("w{i:07}"));
        }
    }
}
