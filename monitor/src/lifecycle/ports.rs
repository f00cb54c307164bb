//! The bounded set of service ports used as a metric label.

use std::collections::{BTreeMap, BTreeSet};

/// Label for every port outside the set.
pub const OTHER: &str = "other";

/// Ports named with `--port`, plus the first `budget` server ports that completed a
/// handshake (a scan or a flood of refused SYNs admits nothing). Once admitted a port
/// keeps its label, so series do not churn. Bound: `configured + budget + 1` values.
#[derive(Clone, Debug)]
pub struct PortLabels {
    configured: BTreeSet<u16>,
    auto: BTreeSet<u16>,
    budget: usize,
    /// The label strings, made once per port. Leaked on purpose: at most
    /// `configured + budget` of them exist for the life of the process, and `&'static`
    /// labels cost nothing to hand to every connection and metric.
    names: BTreeMap<u16, &'static str>,
}

impl PortLabels {
    pub fn new(configured: impl IntoIterator<Item = u16>, budget: usize) -> PortLabels {
        let configured: BTreeSet<u16> = configured.into_iter().collect();
        let names = configured.iter().map(|p| (*p, leak(*p))).collect();
        PortLabels {
            configured,
            auto: BTreeSet::new(),
            budget,
            names,
        }
    }

    /// Admits `port` if there is room (call when a handshake completes on it).
    pub fn admit(&mut self, port: u16) {
        if !self.configured.contains(&port)
            && self.auto.len() < self.budget
            && self.auto.insert(port)
        {
            self.names.insert(port, leak(port));
        }
    }

    /// Admits every port `other` admitted (a copy updated without the engine lock).
    pub fn admit_from(&mut self, other: &PortLabels) {
        for p in &other.auto {
            self.admit(*p);
        }
    }

    pub fn label(&self, port: Option<u16>) -> &'static str {
        port.and_then(|p| self.names.get(&p).copied())
            .unwrap_or(OTHER)
    }

    /// Every label value this set can produce right now.
    pub fn values(&self) -> impl Iterator<Item = String> + '_ {
        self.configured
            .iter()
            .chain(self.auto.iter())
            .map(|p| p.to_string())
            .chain(std::iter::once(OTHER.to_string()))
    }
}

fn leak(port: u16) -> &'static str {
    Box::leak(port.to_string().into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_the_label_set() {
        let mut p = PortLabels::new([443], 2);
        for port in [80, 8080, 9090, 80] {
            p.admit(port);
        }
        assert_eq!(p.label(Some(443)), "443");
        assert_eq!(p.label(Some(80)), "80");
        assert_eq!(p.label(Some(8080)), "8080");
        assert_eq!(p.label(Some(9090)), "other");
        assert_eq!(p.label(None), "other");
        assert_eq!(p.values().count(), 4);
    }
}
