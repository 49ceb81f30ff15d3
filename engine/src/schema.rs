//! The attribute schema: what a server, a task, a user and a client look like
//! to the engine, and the bounds every growing structure respects.
//!
//! Every map or vector in the engine that grows with input has a bound listed
//! here, with what happens when it is reached (TIGER_STYLE: limits are part of
//! the design, not an accident of memory).

use std::fmt;

/// Rows per block. A block's predicate result is one `u64` bitmask, so this is
/// fixed at 64.
pub const BLOCK_ROWS: usize = 64;

/// Longest server name in bytes. Longer names are refused with
/// [`crate::EngineError::BadName`]; names live in a compact arena with a one
/// byte length.
pub const MAX_NAME_LEN: usize = 255;

/// Distinct application names the table can know (from registrations, deltas
/// and compiled expressions). Reaching it gives
/// [`crate::EngineError::LimitReached`] (or [`crate::ExprError::Limit`] when
/// compiling); each app costs one bit per server row, allocated on first use.
pub const MAX_APPS: usize = 1024;

/// Distinct label keys (`region`, `arch`, ...). Each costs 4 bytes per server
/// row in blocks where it is used (12 where some values are numbers), plus 8
/// bytes of directory per block. Reaching it gives `LimitReached`.
pub const MAX_LABEL_KEYS: usize = 64;

/// Distinct string label values (and string constants compared with labels).
/// Reaching it gives `LimitReached`.
pub const MAX_LABEL_STRINGS: usize = 1 << 20;

/// Users whose in-flight count is tracked at once. When reached, users with
/// nothing in flight are forgotten; if none can be, compiling a query for a new
/// user fails with [`crate::ExprError::Limit`].
pub const MAX_TRACKED_USERS: usize = 1 << 16;

/// Largest number of shards a table may have.
pub const MAX_SHARDS: usize = 256;

/// Largest table capacity (rows). Server ids are `u32`.
pub const MAX_CAPACITY: usize = 1 << 30;

/// Nearest misses reported by `explain`.
pub const MAX_NEAREST: usize = 5;

/// Identifies a row of the server table. Ids are reused after a server is
/// removed; a [`crate::Reservation`] carries the row's generation so a late
/// release cannot touch the new occupant.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub u32);

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A label value: labels are free-form (`region = "eu"`, `gpus = 2`).
#[derive(Clone, Debug, PartialEq)]
pub enum LabelValue {
    /// A string value (interned by the table).
    Str(String),
    /// A number.
    Num(f64),
}

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelValue::Str(s) => write!(f, "{s:?}"),
            LabelValue::Num(n) => write!(f, "{n}"),
        }
    }
}

/// A full server report, sent by a worker when it registers.
///
/// `power`, `idle_power` and `load` are stored with `f32` precision (about 7
/// significant digits): it halves their memory and doubles the lanes of the
/// vectorised filters, and no scheduling decision needs more. Expressions see
/// the stored value.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ServerRecord {
    /// Unique name; registering an existing name replaces that row.
    pub name: String,
    /// Task slots in total.
    pub slots: u32,
    /// Task slots free (reservations take from this).
    pub slots_free: u32,
    /// CPU cores. The table also keeps `cores_free`, set to `cores` on
    /// registration and taken from by reservations.
    pub cores: u32,
    /// Computing power (arbitrary units, e.g. a benchmark score).
    pub power: f64,
    /// Idle computing power (the default `prefer`).
    pub idle_power: f64,
    /// Memory in bytes.
    pub mem: u64,
    /// Free memory in bytes (reservations take from this).
    pub mem_free: u64,
    /// Load (e.g. load average divided by cores).
    pub load: f64,
    /// Applications installed on the server.
    pub apps: Vec<String>,
    /// Free labels.
    pub labels: Vec<(String, LabelValue)>,
}

/// Administrative/liveness state of a server. Only `Up` servers are matched.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// Accepts tasks.
    Up,
    /// Missed its liveness deadline or was marked down.
    Down,
    /// Finishes its tasks but takes no new ones.
    Draining,
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Draining => "draining",
        })
    }
}

/// One attribute change in a delta report.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// New total slots.
    Slots(u32),
    /// New free slots.
    SlotsFree(u32),
    /// New core count.
    Cores(u32),
    /// New free core count.
    CoresFree(u32),
    /// New computing power.
    Power(f64),
    /// New idle computing power.
    IdlePower(f64),
    /// New memory size in bytes.
    Mem(u64),
    /// New free memory in bytes.
    MemFree(u64),
    /// New load.
    Load(f64),
    /// Set a label.
    Label(String, LabelValue),
    /// Remove a label.
    LabelRemoved(String),
    /// An application was installed.
    AppAdded(String),
    /// An application was removed.
    AppRemoved(String),
}

/// What happened to a delta.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// The delta was newer than anything seen and was applied.
    Applied,
    /// The delta's sequence number was not above the last applied one: it was
    /// dropped (and counted).
    Stale,
}

/// The numeric columns every server has, as seen by expressions
/// (`server.<name>`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    /// `server.slots`
    Slots,
    /// `server.slots_free`
    SlotsFree,
    /// `server.cores`
    Cores,
    /// `server.cores_free`
    CoresFree,
    /// `server.power`
    Power,
    /// `server.idle_power`
    IdlePower,
    /// `server.mem`
    Mem,
    /// `server.mem_free`
    MemFree,
    /// `server.load`
    Load,
}

/// How a column is stored, which decides the fast comparison used for it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    U32,
    F32,
    U64,
}

impl Column {
    /// All built-in numeric columns.
    pub const ALL: [Column; 9] = [
        Column::Slots,
        Column::SlotsFree,
        Column::Cores,
        Column::CoresFree,
        Column::Power,
        Column::IdlePower,
        Column::Mem,
        Column::MemFree,
        Column::Load,
    ];

    /// The attribute name in expressions.
    pub fn name(self) -> &'static str {
        match self {
            Column::Slots => "slots",
            Column::SlotsFree => "slots_free",
            Column::Cores => "cores",
            Column::CoresFree => "cores_free",
            Column::Power => "power",
            Column::IdlePower => "idle_power",
            Column::Mem => "mem",
            Column::MemFree => "mem_free",
            Column::Load => "load",
        }
    }

    /// Looks a built-in column up by name.
    pub fn from_name(name: &str) -> Option<Column> {
        Column::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Whether reservations take from this column (`slots_free`,
    /// `cores_free`, `mem_free`): such columns are atomics, changed by
    /// compare-and-swap, not plain copy-on-write arrays.
    pub(crate) fn is_capacity(self) -> bool {
        matches!(
            self,
            Column::SlotsFree | Column::CoresFree | Column::MemFree
        )
    }

    pub(crate) fn kind(self) -> ColumnKind {
        match self {
            Column::Slots | Column::SlotsFree | Column::Cores | Column::CoresFree => {
                ColumnKind::U32
            }
            Column::Power | Column::IdlePower | Column::Load => ColumnKind::F32,
            Column::Mem | Column::MemFree => ColumnKind::U64,
        }
    }
}

/// A user as the user DB stores it, and as expressions see it (`user.*`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct UserRecord {
    /// User name (`user.name`).
    pub name: String,
    /// Priority (`user.priority`); higher goes first in the distributor.
    pub priority: i32,
    /// Tasks the user may have in flight at once; 0 means no limit
    /// (`user.max_in_flight`).
    pub max_in_flight: u32,
    /// Apps the user may run; empty means all (`user.allowed_apps`).
    pub allowed_apps: Vec<String>,
    /// `require` used when a task gives none.
    pub default_require: String,
    /// `prefer` used when a task gives none.
    pub default_prefer: String,
}

impl UserRecord {
    /// A user with no limits and no defaults.
    pub fn new(name: impl Into<String>) -> UserRecord {
        UserRecord {
            name: name.into(),
            ..UserRecord::default()
        }
    }

    /// Whether the user may run `app`.
    pub fn may_run(&self, app: &str) -> bool {
        self.allowed_apps.is_empty() || self.allowed_apps.iter().any(|a| a == app)
    }
}

/// Task attributes as expressions see them (`task.*`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TaskAttrs {
    /// The application to run (`task.app`); if non-empty the server must have
    /// it.
    pub app: String,
    /// Cores demanded (`task.cores`), reserved on the chosen server.
    pub cores: u32,
    /// Memory demanded in bytes (`task.mem`), reserved on the chosen server.
    pub mem: u64,
    /// Slots demanded (`task.slots`), reserved on the chosen server.
    pub slots: u32,
    /// Task priority (`task.priority`).
    pub priority: i32,
    /// Any other `task.*` attributes.
    pub extra: Vec<(String, LabelValue)>,
}

/// Everything an expression may refer to besides the server: the context of
/// one submission. All of it is constant when the expression is compiled.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Env {
    /// `task.*`
    pub task: TaskAttrs,
    /// `user.*` (and the user's limits)
    pub user: UserRecord,
    /// `client.*`, sent by the client when it connects.
    pub client: Vec<(String, LabelValue)>,
}

/// Formats a byte count the way users write it (`512MiB`).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size && n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_format_like_the_expression_units() {
        assert_eq!(format_bytes(512 << 20), "512MiB");
        assert_eq!(format_bytes(32 << 30), "32GiB");
        assert_eq!(format_bytes(1000), "1000B");
        assert_eq!(format_bytes(0), "0B");
    }

    #[test]
    fn columns_round_trip_by_name() {
        for c in Column::ALL {
            assert_eq!(Column::from_name(c.name()), Some(c));
        }
        assert_eq!(Column::from_name("region"), None);
    }

    #[test]
    fn empty_allowed_apps_means_all() {
        let mut u = UserRecord::new("a");
        assert!(u.may_run("x"));
        u.allowed_apps = vec!["y".into()];
        assert!(!u.may_run("x"));
        assert!(u.may_run("y"));
    }
}
