//! The operator's Prometheus metrics, served on `/metrics` by the `run` subcommand.
//!
//! Counters are what an on-call engineer asks first: is it reconciling, how often does it
//! fail and why, and is it writing to the API server when nothing changed (applies versus
//! skipped applies).

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Every metric the reconciler records. Cheap to clone: each field is an `Arc` inside.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub applies: Family<KindLabels, Counter>,
    pub skipped_applies: Family<KindLabels, Counter>,
    pub prunes: Family<KindLabels, Counter>,
    pub replacements: Family<KindLabels, Counter>,
    /// 1 while this replica holds the leader Lease and runs the controller.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            // 1 ms .. ~16 s: a no-op resync is a few ms, a first install with slow
            // apiserver round trips can take seconds.
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 15,
            )),
            applies: Family::default(),
            skipped_applies: Family::default(),
            prunes: Family::default(),
            replacements: Family::default(),
            leader: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `plinth_operator` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("plinth_operator");
        r.register(
            "reconciles",
            "CsiDeployment reconciliations started",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_failures",
            "Reconciliations that ended in an error, by reason",
            self.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            self.duration.clone(),
        );
        r.register(
            "applies",
            "Server-side apply requests sent, by kind",
            self.applies.clone(),
        );
        r.register(
            "skipped_applies",
            "Applies skipped because the live object already matched, by kind",
            self.skipped_applies.clone(),
        );
        r.register(
            "prunes",
            "Owned objects deleted because they are no longer desired, by kind",
            self.prunes.clone(),
        );
        r.register(
            "replacements",
            "Objects deleted and re-created because an immutable field changed, by kind",
            self.replacements.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controller",
            self.leader.clone(),
        );
    }

    pub fn observe_reconcile(&self, elapsed: Duration, error_reason: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(reason) = error_reason {
            self.failures
                .get_or_create(&ErrorLabels {
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    pub fn count(family: &Family<KindLabels, Counter>, kind: &str) {
        family
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }
}

/// Renders a registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_appear_with_their_labels() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.observe_reconcile(Duration::from_millis(3), Some("api"));
        Metrics::count(&metrics.skipped_applies, "StatefulSet");
        let text = render(&registry).unwrap();
        assert!(
            text.contains("plinth_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"plinth_operator_reconcile_failures_total{reason="api"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"plinth_operator_skipped_applies_total{kind="StatefulSet"} 1"#),
            "{text}"
        );
        assert!(text.contains("plinth_operator_reconcile_duration_seconds_count 1"));
    }
}
