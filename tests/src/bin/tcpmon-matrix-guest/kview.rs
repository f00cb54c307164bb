//! What the kernel itself says is attached to the monitored interface, independent of
//! tcpmon's own metric: XDP from `ip link`, netlink filters and clsact from `tc`,
//! TCX links from BPF_PROG_QUERY, and which program ids still exist.

use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};

use crate::netns::{self, Pair, SERVER_IF};

/// The foreign filter's priority: tcpmon's netlink filters get the kernel's automatic
/// priority (49152 and down), never this one.
pub const FOREIGN_PREF: u32 = 7;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub dir: &'static str,
    pub pref: u32,
    pub kind: String,
    /// A bpf filter's program name and id.
    pub prog: Option<(String, u32)>,
}

impl Filter {
    pub fn is_foreign(&self) -> bool {
        self.pref == FOREIGN_PREF && self.prog.is_none()
    }

    pub fn describe(&self) -> String {
        match &self.prog {
            Some((name, id)) => format!("{} {} filter {name} id {id}", self.dir, self.kind),
            None => format!("{} {} filter pref {}", self.dir, self.kind, self.pref),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct View {
    /// "native" or "generic", and the program id.
    pub xdp: Option<(String, u32)>,
    pub filters: Vec<Filter>,
    pub clsact: bool,
    /// (hook, program name, id) per TCX link; None where the kernel has no TCX.
    pub tcx: Option<Vec<(&'static str, String, u32)>>,
}

impl View {
    pub fn of(pair: &Pair) -> anyhow::Result<View> {
        let link = pair.ip(&pair.server, &["link", "show", "dev", SERVER_IF])?;
        let qdisc = pair.tc(&pair.server, &["qdisc", "show", "dev", SERVER_IF])?;
        let clsact = qdisc.contains("qdisc clsact");
        let mut filters = Vec::new();
        if clsact {
            for dir in ["ingress", "egress"] {
                let out = pair.tc(&pair.server, &["filter", "show", "dev", SERVER_IF, dir])?;
                filters.extend(parse_filters(dir, &out));
            }
        }
        Ok(View {
            xdp: parse_xdp(&link),
            filters,
            clsact,
            tcx: netns::within(&pair.server, tcx_links)?,
        })
    }

    /// How the kernel has tcpmon's programs on each hook: ("xdp_ingress", "native"),
    /// ("tc_egress", "tcx"), ("tc_ingress", "netlink"), ...
    pub fn tcpmon_hooks(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some((mode, _)) = &self.xdp {
            out.push(("xdp_ingress".to_string(), mode.clone()));
        }
        for (hook, name, _) in self.tcx.iter().flatten() {
            if name.starts_with("tcpmon") {
                out.push((format!("tc_{hook}"), "tcx".to_string()));
            }
        }
        for f in &self.filters {
            if f.prog
                .as_ref()
                .is_some_and(|(n, _)| n.starts_with("tcpmon"))
            {
                out.push((format!("tc_{}", f.dir), "netlink".to_string()));
            }
        }
        out.sort();
        out
    }

    /// Everything on the interface except the foreign filter (and the clsact the
    /// checker made for it, when `our_clsact`).
    pub fn leftovers(&self, our_clsact: bool) -> Vec<String> {
        let mut left = Vec::new();
        if let Some((mode, id)) = &self.xdp {
            left.push(format!("XDP ({mode}) prog id {id}"));
        }
        for f in self.filters.iter().filter(|f| !f.is_foreign()) {
            left.push(f.describe());
        }
        if self.clsact && !our_clsact {
            left.push("clsact qdisc".into());
        }
        for (hook, name, id) in self.tcx.iter().flatten() {
            left.push(format!("TCX {hook} {name} id {id}"));
        }
        left
    }

    pub fn foreign_present(&self) -> (bool, bool) {
        let has = |dir| self.filters.iter().any(|f| f.dir == dir && f.is_foreign());
        (has("ingress"), has("egress"))
    }
}

/// `ip link show`: the attach mode as a word of the first line ("xdp" is driver mode,
/// "xdpgeneric" skb mode; older iproute2 writes "xdpgeneric/id:12"), the program on
/// a later "prog/xdp id 12 name ..." line.
fn parse_xdp(link: &str) -> Option<(String, u32)> {
    let first = link.lines().next()?;
    let mode = first.split_whitespace().find_map(|w| {
        let kind = w.split_once("/id:").map_or(w, |(k, _)| k);
        Some(match kind {
            "xdp" | "xdpdrv" => "native",
            "xdpgeneric" => "generic",
            "xdpoffload" => "offload",
            "xdpmulti" => "multi",
            _ => return None,
        })
    })?;
    let words: Vec<&str> = link.split_whitespace().collect();
    let id = words
        .windows(3)
        .find(|w| w[0] == "prog/xdp" && w[1] == "id")
        .and_then(|w| w[2].parse().ok())
        .or_else(|| {
            first
                .split_once("/id:")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Some((mode.to_string(), id))
}

/// `tc filter show` output: one entry per "filter ... pref N KIND ... handle" line.
fn parse_filters(dir: &'static str, out: &str) -> Vec<Filter> {
    let mut filters: Vec<Filter> = Vec::new();
    for l in out.lines().filter(|l| l.starts_with("filter ")) {
        let words: Vec<&str> = l.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
        };
        let at = words.iter().position(|w| *w == "pref");
        let Some(pref) = at.and_then(|i| words.get(i + 1)?.parse().ok()) else {
            continue;
        };
        let kind = at
            .and_then(|i| words.get(i + 2))
            .unwrap_or(&"?")
            .to_string();
        // The line with a handle describes the filter; the one without is its chain
        // head (u32 says "fh ID order N" for a filter, "fh ID ht divisor" for a table).
        let u32_filter = words.contains(&"fh") && words.contains(&"order");
        if !words.contains(&"handle") && !u32_filter {
            continue;
        }
        let prog = after("id").and_then(|id| {
            let id = id.parse().ok()?;
            let name = words.iter().find(|w| w.starts_with("tcpmon")).map_or_else(
                || after("name").map_or("?", |v| v).to_string(),
                |w| w.to_string(),
            );
            Some((name, id))
        });
        filters.push(Filter {
            dir,
            pref,
            kind,
            prog,
        });
    }
    filters
}

/// TCX links on the server interface; run inside the server namespace. None when the
/// kernel has no TCX (before 6.6 the query is refused).
fn tcx_links() -> Option<Vec<(&'static str, String, u32)>> {
    let iface = std::ffi::CString::new(SERVER_IF).ok()?;
    let mut out = Vec::new();
    for (hook, t) in [
        ("ingress", TcAttachType::Ingress),
        ("egress", TcAttachType::Egress),
    ] {
        let (_, progs) = SchedClassifier::query_tcx(iface.as_c_str(), t).ok()?;
        for p in progs {
            out.push((hook, p.name_as_str().unwrap_or("?").to_string(), p.id()));
        }
    }
    Some(out)
}

/// Whether this kernel has TCX (queried on loopback in the calling thread's namespace).
pub fn kernel_has_tcx() -> bool {
    SchedClassifier::query_tcx(c"lo", TcAttachType::Ingress).is_ok()
}

/// Which of `ids` still exist as programs, after waiting up to 5 s for the kernel to
/// free them (links and programs go away a little after the process).
pub fn programs_alive(ids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<u32> = aya::programs::loaded_programs()
            .flatten()
            .map(|p| p.id())
            .filter(|id| ids.contains(id))
            .collect();
        if alive.is_empty() || Instant::now() > deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tc_and_ip_output() {
        let tc = "filter protocol all pref 7 matchall chain 0 \n\
                  filter protocol all pref 7 matchall chain 0 handle 0x1 \n  not_in_hw\n\
                  filter protocol all pref 49152 bpf chain 0 \n\
                  filter protocol all pref 49152 bpf chain 0 handle 0x1 tcpmon_tc_ingress direct-action not_in_hw id 42 tag 0123 jited \n";
        let f = parse_filters("ingress", tc);
        assert_eq!(f.len(), 2);
        let u32 = "filter protocol all pref 7 u32 chain 0 \n\
                   filter protocol all pref 7 u32 chain 0 fh 800: ht divisor 1 \n\
                   filter protocol all pref 7 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 \n";
        let u = parse_filters("egress", u32);
        assert_eq!(u.len(), 1);
        assert!(u[0].is_foreign());
        assert!(f[0].is_foreign());
        assert_eq!(f[1].prog, Some(("tcpmon_tc_ingress".into(), 42)));
        let link = "5: veth-s@if6: <BROADCAST,UP> mtu 1500 xdpgeneric/id:33 qdisc noqueue";
        assert_eq!(parse_xdp(link), Some(("generic".into(), 33)));
        assert_eq!(
            parse_xdp("2: eth0: <UP> mtu 1500 xdp/id:9 qdisc"),
            Some(("native".into(), 9))
        );
        assert_eq!(parse_xdp("2: eth0: <UP> mtu 1500 qdisc"), None);
        let now = "3: va@vb: <UP,LOWER_UP> mtu 1500 xdpgeneric qdisc noqueue state UP\n    \
                   link/ether c2:f8 brd ff:ff\n    prog/xdp id 317 name tcpmon_xdp tag 20 jited \n";
        assert_eq!(parse_xdp(now), Some(("generic".into(), 317)));
    }
}
