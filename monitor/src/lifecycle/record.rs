//! The JSON-lines record written for every connection that ends.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use super::conn::{Conn, End};

/// One ended connection. Times are Unix nanoseconds (live: kernel monotonic stamps
/// converted with the agent's clock offset; replay: capture time).
#[derive(Clone, Debug, Serialize)]
pub struct ConnRecord {
    pub start_unix_ns: i128,
    pub end_unix_ns: i128,
    pub duration_ns: u64,
    /// The SYN sender; for a connection seen mid-stream, the key's first endpoint.
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Whether client and server are known from a SYN or SYN-ACK.
    pub roles_known: bool,
    /// Role of the monitored host: "client", "server" or "unknown".
    pub local_role: &'static str,
    pub syn_to_synack_ns: Option<u64>,
    pub synack_to_ack_ns: Option<u64>,
    /// Wireshark's tcp.analysis.initial_rtt: most recent SYN to the first segment
    /// with ACK and without SYN.
    pub irtt_ns: Option<u64>,
    pub syns: u32,
    pub synacks: u32,
    /// Payload bytes and wire segments each way, as far as the kernel tracked them.
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    pub segs_client_to_server: u32,
    pub segs_server_to_client: u32,
    /// Who sent the first FIN: "client", "server" or null.
    pub closed_by: Option<&'static str>,
    pub simultaneous_close: bool,
    /// "fin", "rst", "timeout", or the handshake failure ("refused", "reset", "timeout").
    pub how: &'static str,
    pub failed: bool,
    pub reset_by: Option<&'static str>,
    pub client_state: &'static str,
    pub server_state: &'static str,
    /// Wireshark's tcp.completeness: 1 SYN, 2 SYN-ACK, 4 ACK, 8 DATA, 16 FIN, 32 RST.
    pub completeness: u8,
    pub mid_stream: bool,
    /// Retransmitted segments (all kinds) and out-of-order segments each way.
    pub retrans_client_to_server: u32,
    pub retrans_server_to_client: u32,
    pub out_of_order_client_to_server: u32,
    pub out_of_order_server_to_client: u32,
}

pub struct Endpoints {
    pub addrs: [SocketAddr; 2],
}

impl Endpoints {
    /// The key's `lo` and `hi` endpoints, in that order.
    pub fn of(key: &monitor_common::FlowKey) -> Self {
        let ip = |w: &[u32; 4]| -> IpAddr { crate::event::to_ip(key.family, w) };
        Endpoints {
            addrs: [
                SocketAddr::new(ip(&key.addr_lo), key.port_lo),
                SocketAddr::new(ip(&key.addr_hi), key.port_hi),
            ],
        }
    }
}

impl ConnRecord {
    pub fn new(
        c: &Conn,
        eps: &Endpoints,
        local_role: &'static str,
        how: &'static str,
        failed: bool,
        to_unix: impl Fn(u64) -> i128,
    ) -> ConnRecord {
        let client: End = c.client.unwrap_or(0);
        let server = client ^ 1;
        let who = |e: Option<End>| e.map(|e| if e == client { "client" } else { "server" });
        let end = c.finished.unwrap_or(c.last_ns);
        let (l1, l2) = match (c.syn_ns, c.synack_ns, c.ack_ns) {
            (Some(s), Some(sa), Some(a)) if sa >= s && a >= sa => (Some(sa - s), Some(a - sa)),
            _ => (None, None),
        };
        ConnRecord {
            start_unix_ns: to_unix(c.first_ns),
            end_unix_ns: to_unix(end),
            duration_ns: end.saturating_sub(c.first_ns),
            client: eps.addrs[client],
            server: eps.addrs[server],
            roles_known: c.client.is_some(),
            local_role,
            syn_to_synack_ns: l1,
            synack_to_ack_ns: l2,
            irtt_ns: c.irtt(),
            syns: c.syns,
            synacks: c.synacks,
            bytes_client_to_server: c.bytes[client],
            bytes_server_to_client: c.bytes[server],
            segs_client_to_server: c.segs[client],
            segs_server_to_client: c.segs[server],
            closed_by: who(c.active_closer),
            simultaneous_close: c.simultaneous_close,
            how,
            failed,
            reset_by: who(c.reset_by),
            client_state: c.ends[client].name(),
            server_state: c.ends[server].name(),
            completeness: c.completeness,
            mid_stream: c.mid_stream,
            retrans_client_to_server: c.retrans[client],
            retrans_server_to_client: c.retrans[server],
            out_of_order_client_to_server: c.out_of_order[client],
            out_of_order_server_to_client: c.out_of_order[server],
        }
    }
}

/// What a replay summary needs of the records, gathered as they are written, so a
/// replay's memory follows the connections open at once rather than every
/// connection of the capture (a record is ~300 B; this keeps three latencies).
#[derive(Clone, Debug, Default)]
pub struct RecordSummary {
    pub connections: u64,
    pub ended: u64,
    pub mid_stream: u64,
    /// Ended connections by ("closed" or "failed", how).
    pub how: BTreeMap<(&'static str, &'static str), u64>,
    /// Connections open at the end by (client state, server state).
    pub open_states: BTreeMap<(&'static str, &'static str), u64>,
    pub irtt_ns: Vec<u64>,
    pub syn_to_synack_ns: Vec<u64>,
    pub synack_to_ack_ns: Vec<u64>,
    pub retrans_client_to_server: u64,
    pub retrans_server_to_client: u64,
    pub out_of_order: u64,
    pub ended_by_rst: u64,
    /// RST segments that belonged to no live connection (not connections).
    pub stray_resets: u64,
    /// Tuples seen only through stray RSTs: streams to Wireshark, not connections.
    pub stray_tuples: std::collections::HashSet<monitor_common::FlowKey>,
    /// Wireshark's tcp.completeness values.
    pub completeness: BTreeMap<u8, u64>,
}

impl RecordSummary {
    /// Adds an ended connection's record, or (`ended` false) one still open.
    pub fn add(&mut self, r: &ConnRecord, ended: bool) {
        self.connections += 1;
        if ended {
            self.ended += 1;
            let kind = if r.failed { "failed" } else { "closed" };
            *self.how.entry((kind, r.how)).or_default() += 1;
        } else {
            *self
                .open_states
                .entry((r.client_state, r.server_state))
                .or_default() += 1;
        }
        self.mid_stream += r.mid_stream as u64;
        self.irtt_ns.extend(r.irtt_ns);
        self.syn_to_synack_ns.extend(r.syn_to_synack_ns);
        self.synack_to_ack_ns.extend(r.synack_to_ack_ns);
        self.retrans_client_to_server += r.retrans_client_to_server as u64;
        self.retrans_server_to_client += r.retrans_server_to_client as u64;
        self.out_of_order +=
            r.out_of_order_client_to_server as u64 + r.out_of_order_server_to_client as u64;
        self.ended_by_rst += r.reset_by.is_some() as u64;
        *self.completeness.entry(r.completeness).or_default() += 1;
    }
}
