//! Metric families as plain data, built from a core's counters at each
//! scrape, and their Prometheus text encoding through prometheus-client
//! (a [`Collector`] over one scrape's families).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::histogram::Log2Histogram;

/// One value of a family.
#[derive(Debug, Clone)]
pub enum Value {
    /// Only ever grows (the name gets `_total`).
    Counter(u64),
    /// Goes up and down.
    Gauge(i64),
    /// Microsecond counts, exported in seconds (boxed: a histogram is
    /// 264 bytes, the other values 8).
    Micros(Box<Log2Histogram>),
}

/// A family: its name (without the `allot_` prefix and the `_total` or
/// unit suffix), help, unit, and samples by label set.
#[derive(Debug, Clone)]
pub struct Family {
    /// E.g. `tasks_completed`.
    pub name: &'static str,
    /// One line for `# HELP`.
    pub help: &'static str,
    /// Seconds for the histograms, none otherwise.
    pub seconds: bool,
    /// (labels, value); every value of a family is of one kind.
    pub samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

impl Family {
    /// A family of one sample without labels.
    pub fn single(name: &'static str, help: &'static str, v: Value) -> Family {
        Family {
            name,
            help,
            seconds: matches!(v, Value::Micros(_)),
            samples: vec![(Vec::new(), v)],
        }
    }

    /// A family with one label.
    pub fn by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        samples: impl IntoIterator<Item = (String, Value)>,
    ) -> Family {
        let samples: Vec<_> = samples
            .into_iter()
            .map(|(l, v)| (vec![(label, l)], v))
            .collect();
        Family {
            name,
            help,
            seconds: samples.iter().any(|(_, v)| matches!(v, Value::Micros(_))),
            samples,
        }
    }
}

/// One scrape's families, handed to prometheus-client's registry.
#[derive(Debug)]
struct Scrape(Vec<Family>);

struct Sample<'a>(&'a Value);

impl EncodeMetric for Sample<'_> {
    fn encode(&self, mut e: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Value::Counter(n) => e.encode_counter::<NoLabelSet, u64, u64>(n, None),
            Value::Gauge(n) => e.encode_gauge(n),
            Value::Micros(h) => {
                let buckets: Vec<(f64, u64)> = h
                    .buckets()
                    .map(|(b, c)| (b.map_or(f64::MAX, |us| us as f64 / 1e6), c))
                    .collect();
                e.encode_histogram::<NoLabelSet>(h.sum() as f64 / 1e6, h.count(), &buckets, None)
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        kind(self.0)
    }
}

fn kind(v: &Value) -> MetricType {
    match v {
        Value::Counter(_) => MetricType::Counter,
        Value::Gauge(_) => MetricType::Gauge,
        Value::Micros(_) => MetricType::Histogram,
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let Some((_, first)) = f.samples.first() else {
                continue;
            };
            let unit = f.seconds.then_some(Unit::Seconds);
            let mut m = encoder.encode_descriptor(f.name, f.help, unit.as_ref(), kind(first))?;
            match f.samples.as_slice() {
                // One sample without labels.
                [(labels, v)] if labels.is_empty() => Sample(v).encode(m)?,
                samples => {
                    for (labels, v) in samples {
                        Sample(v).encode(m.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The OpenMetrics text of `families`, every name prefixed `allot_`.
pub fn encode(families: Vec<Family>) -> String {
    let mut registry = Registry::with_prefix("allot");
    registry.register_collector(Box::new(Scrape(families)));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in
    // a family (mixed kinds), and the page then ends where it stopped.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!("metrics encoding stopped: {e}");
    }
    out
}

/// The same families in the Prometheus text format 0.0.4 (what `curl`,
/// `promtool check metrics` and scrapers that do not ask for OpenMetrics
/// read): from the OpenMetrics text, a counter's `# HELP` and `# TYPE`
/// name its samples' `_total` name, and the `# UNIT` and `# EOF` lines
/// (OpenMetrics only) are left out.
pub fn encode_text(families: Vec<Family>) -> String {
    let om = encode(families);
    let lines: Vec<&str> = om.lines().collect();
    let mut out = String::with_capacity(om.len());
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("# UNIT ") || *line == "# EOF" {
            continue;
        }
        let counter_of = |l: &str| -> Option<String> {
            let name = l.strip_prefix("# TYPE ")?.strip_suffix(" counter")?;
            Some(name.to_owned())
        };
        if let Some(name) = counter_of(line) {
            out.push_str(&format!("# TYPE {name}_total counter\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // HELP comes right before its TYPE (and UNIT).
            let next_type = lines[i + 1..].iter().find(|l| !l.starts_with("# UNIT "));
            if let (Some(name), Some(t)) = (rest.split(' ').next(), next_type) {
                if counter_of(t).as_deref() == Some(name) {
                    let help = &rest[name.len()..];
                    out.push_str(&format!("# HELP {name}_total{help}\n"));
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_prefix_suffix_and_labels() {
        let mut h = Log2Histogram::default();
        h.record(3);
        let text = encode(vec![
            Family::by(
                "tasks_completed",
                "Tasks ended.",
                "status",
                [("ok".into(), Value::Counter(5))],
            ),
            Family::single("tasks_waiting", "Waiting.", Value::Gauge(2)),
            Family::single("match_duration", "Match time.", Value::Micros(Box::new(h))),
        ]);
        assert!(
            text.contains("allot_tasks_completed_total{status=\"ok\"} 5"),
            "{text}"
        );
        assert!(text.contains("allot_tasks_waiting 2"), "{text}");
        assert!(
            text.contains("allot_match_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("allot_match_duration_seconds_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let text = encode_text(vec![
            Family::single("tasks_submitted", "Tasks received.", Value::Counter(5)),
            Family::single(
                "match_duration",
                "Match time.",
                Value::Micros(Box::default()),
            ),
        ]);
        assert!(
            text.contains("# HELP allot_tasks_submitted_total Tasks received.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE allot_tasks_submitted_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nallot_tasks_submitted_total 5\n"), "{text}");
        assert!(
            text.contains("# TYPE allot_match_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
    }
}
