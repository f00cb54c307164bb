//! The bounded set of service ports used as a metric label.

use std::collections::BTreeSet;

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
}

impl PortLabels {
    pub fn new(configured: impl IntoIterator<Item = u16>, budget: usize) -> PortLabels {
        PortLabels {
            configured: configured.into_iter().collect(),
            auto: BTreeSet::new(),
            budget,
        }
    }

    /// Admits `port` if there is room (call when a handshake completes on it).
    pub fn admit(&mut self, port: u16) {
        if !self.configured.contains(&port) && self.auto.len() < self.budget {
            self.auto.insert(port);
        }
    }

    pub fn label(&self, port: Option<u16>) -> String {
        match port {
            Some(p) if self.configured.contains(&p) || self.auto.contains(&p) => p.to_string(),
            _ => OTHER.to_string(),
        }
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
