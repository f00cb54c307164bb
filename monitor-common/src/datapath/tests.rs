use super::*;
use crate::flags::{ACK, SYN};
use crate::flow::{FlowKey, FlowState, FullRate};
use crate::frames::Frame;
use crate::parse::ParseError;
use std::collections::{BTreeMap, HashMap};
use std::vec::Vec;

const CLIENT: [u8; 4] = [10, 0, 0, 2];
const SERVER: [u8; 4] = [10, 0, 0, 1];

/// Host tables as a test sees them, with a room limit for new ports.
#[derive(Default)]
struct HostSyn {
    ports: BTreeMap<u16, [u64; 3]>,
    port_room: usize,
    prefixes: HashMap<PrefixKey, u64>,
    hashes: Vec<(u16, u32, u64)>,
    sources: usize,
}

impl SynTables for HostSyn {
    fn port_add(&mut self, port: u16, field: PortField) -> bool {
        if !self.ports.contains_key(&port) && self.ports.len() >= self.port_room {
            return false;
        }
        self.ports.entry(port).or_default()[field as usize] += 1;
        true
    }
    fn prefix_add(&mut self, prefix: &PrefixKey, _cfg: &SynConfig) -> PrefixAdd {
        let n = self.prefixes.entry(*prefix).or_default();
        *n += 1;
        if *n == 1 {
            PrefixAdd::Inserted
        } else {
            PrefixAdd::Counted
        }
    }
    fn sketch_add(&mut self, port: u16, bank: u32, hash: u64) {
        self.hashes.push((port, bank, hash));
    }
    fn source(&mut self, _: u8, _: &[u32; 4]) {
        self.sources += 1;
    }
}

type Ctrs = [u64; counters::LEN as usize];

fn both_stages<T: FlowTable, S: Sampler>(
    c: &mut Ctrs,
    flows: &mut T,
    sampler: &mut S,
    t: &mut HostSyn,
    frame: &[u8],
    hook: Hook,
) -> Option<Tracked> {
    let p = parse_stage(c, frame, hook, 7, 1, 0).ok()?;
    let cfg = SynConfig {
        seed: 1,
        sample_limit: 0,
        bank: 2,
        ..SynConfig::default()
    };
    let mut clock = LazyClock::new(|| 1_000);
    let mut tables = Tables {
        counters: c,
        flows,
        sampler,
        syn: t,
    };
    Some(track_stage(&mut tables, &mut clock, &p, hook, cfg))
}

#[test]
fn a_handshake_through_both_stages() {
    let (mut c, mut flows) = ([0u64; counters::LEN as usize], HashMap::new());
    let mut t = HostSyn {
        port_room: 8,
        ..HostSyn::default()
    };
    let syn = Frame::v4(CLIENT, 40000, SERVER, 80)
        .flags(SYN)
        .seq_ack(100, 0);
    let synack = Frame::v4(SERVER, 80, CLIENT, 40000)
        .flags(SYN | ACK)
        .seq_ack(500, 101);
    let ack = Frame::v4(CLIENT, 40000, SERVER, 80)
        .flags(ACK)
        .seq_ack(101, 501);
    // Replay's view: one hook sees both directions.
    let hook = Hook::Replay;
    let s = both_stages(
        &mut c,
        &mut flows,
        &mut FullRate,
        &mut t,
        &syn.build(),
        hook,
    )
    .unwrap();
    assert_eq!(s.emit().map(|e| e.kind), Some(EventKind::Syn as u8));
    both_stages(
        &mut c,
        &mut flows,
        &mut FullRate,
        &mut t,
        &synack.build(),
        hook,
    )
    .unwrap();
    let a = both_stages(
        &mut c,
        &mut flows,
        &mut FullRate,
        &mut t,
        &ack.build(),
        hook,
    )
    .unwrap();
    assert!(a.completed);
    assert_eq!(
        a.emit().map(|e| e.kind),
        Some(EventKind::HandshakeAck as u8)
    );
    // SYN, SYN-ACK and the completing ACK, each counted once on the server's port.
    assert_eq!(t.ports[&80], [1, 1, 1]);
    assert_eq!(t.prefixes.len(), 1);
    assert_eq!(c[counters::PREFIX_INSERTS as usize], 1);
    // The sketch hash is the keyed source hash, in the bank the agent set.
    let want = syn::source_hash(1, 4, &[u32::from_ne_bytes(CLIENT), 0, 0, 0]);
    assert_eq!(t.hashes, [(80, 2, want)]);
    assert_eq!(t.sources, 1);
}

#[test]
fn stage_one_counts_outcomes_and_segments() {
    let mut c = [0u64; counters::LEN as usize];
    let data = Frame::v4(CLIENT, 40000, SERVER, 80)
        .flags(ACK)
        .payload(100)
        .build();
    let p = parse_stage(&mut c, &data[..], Hook::TcIngress, 3, 4, 0x8000 | 12).unwrap();
    assert_eq!((p.ifindex, p.segs), (3, 4));
    assert_eq!(
        (p.tcp.vlan_id, p.tcp.vlan_depth),
        (12, 1),
        "the stripped tag"
    );
    assert_eq!(
        c[counters::outcome(Hook::TcIngress, OUTCOME_TCP) as usize],
        1
    );
    assert_eq!(c[counters::segments(Hook::TcIngress) as usize], 4);
    let short = &data[..30];
    assert_eq!(
        parse_stage(&mut c, short, Hook::TcIngress, 3, 1, 0).err(),
        Some(ParseError::Truncated)
    );
    let truncated = counters::outcome(Hook::TcIngress, ParseError::Truncated as usize);
    assert_eq!(c[truncated as usize], 1);
}

#[test]
fn full_port_tables_count_overflow() {
    let (mut c, mut flows) = ([0u64; counters::LEN as usize], HashMap::new());
    let mut t = HostSyn {
        port_room: 1,
        ..HostSyn::default()
    };
    for port in [80, 81, 82] {
        let syn = Frame::v4(CLIENT, 40000, SERVER, port).flags(SYN).build();
        both_stages(
            &mut c,
            &mut flows,
            &mut FullRate,
            &mut t,
            &syn,
            Hook::XdpIngress,
        );
    }
    let synack = Frame::v4(SERVER, 81, CLIENT, 40000)
        .flags(SYN | ACK)
        .seq_ack(5, 1)
        .build();
    both_stages(
        &mut c,
        &mut flows,
        &mut FullRate,
        &mut t,
        &synack,
        Hook::TcEgress,
    );
    assert_eq!(t.ports.len(), 1);
    assert_eq!(c[counters::SYN_PORT_OVERFLOW as usize], 2);
    assert_eq!(c[counters::SYNACK_PORT_OVERFLOW as usize], 1);
    // Ingress SYNs only: the egress SYN-ACK is the server's answer.
    assert_eq!(t.ports[&80], [1, 0, 0]);
}

/// A flow table with no room: every insert refused.
struct NoRoom;

impl FlowTable for NoRoom {
    fn lookup(&mut self, _: &FlowKey) -> Option<&mut FlowState> {
        None
    }
    fn create(&mut self, _: &FlowKey) -> Option<(&mut FlowState, bool)> {
        None
    }
    fn insert_new(&mut self, _: &FlowKey) -> Option<(&mut FlowState, bool)> {
        None
    }
    fn remove(&mut self, _: &FlowKey) -> bool {
        false
    }
}

/// Samples every new connection out.
struct NoneKept;

impl Sampler for NoneKept {
    fn decide(&mut self, _: &FlowKey, _: u64) -> (bool, u8) {
        (false, 4)
    }
}

/// `f` through both stages as replay runs them, SYN tables aside.
fn stage_two<T: FlowTable, S: Sampler>(c: &mut Ctrs, flows: &mut T, sampler: &mut S, f: &Frame) {
    let mut syn = HostSyn::default();
    both_stages(c, flows, sampler, &mut syn, &f.build(), Hook::Replay).unwrap();
}

#[test]
fn flow_table_inserts_removes_and_refusals_are_counted() {
    let (mut c, mut flows) = ([0u64; counters::LEN as usize], HashMap::new());
    let syn = Frame::v4(CLIENT, 40000, SERVER, 80)
        .flags(SYN)
        .seq_ack(100, 0);
    let synack = Frame::v4(SERVER, 80, CLIENT, 40000)
        .flags(SYN | ACK)
        .seq_ack(500, 101);
    stage_two(&mut c, &mut flows, &mut FullRate, &syn);
    stage_two(&mut c, &mut flows, &mut FullRate, &synack);
    // A retransmitted SYN keeps its entry, and a new SYN (another ISN) of the tuple
    // resets it in place: no new element either way.
    stage_two(&mut c, &mut flows, &mut FullRate, &syn);
    let reused = Frame::v4(CLIENT, 40000, SERVER, 80)
        .flags(SYN)
        .seq_ack(9000, 0);
    stage_two(&mut c, &mut flows, &mut FullRate, &reused);
    let other = Frame::v4(CLIENT, 40001, SERVER, 80)
        .flags(SYN)
        .seq_ack(7, 0);
    stage_two(&mut c, &mut flows, &mut FullRate, &other);
    let at = |c: &Ctrs, i: u32| c[i as usize];
    assert_eq!(at(&c, counters::FLOW_INSERTS), 2);
    assert_eq!(flows.len(), 2);
    // A new SYN (another ISN) of a followed tuple, sampled out, ends its entry.
    let other_again = Frame::v4(CLIENT, 40001, SERVER, 80)
        .flags(SYN)
        .seq_ack(7000, 0);
    stage_two(&mut c, &mut flows, &mut NoneKept, &other_again);
    assert_eq!(at(&c, counters::FLOW_REMOVES), 1);
    assert_eq!(flows.len(), 1);
    // Inserts - removes - entries: nothing evicted.
    assert_eq!(
        at(&c, counters::FLOW_INSERTS) - at(&c, counters::FLOW_REMOVES),
        1
    );
    // A table without room refuses the SYN and the data of a flow seen mid-stream.
    stage_two(&mut c, &mut NoRoom, &mut FullRate, &syn);
    let data = Frame::v4(CLIENT, 40002, SERVER, 80)
        .flags(ACK)
        .seq_ack(9, 9)
        .payload(10);
    stage_two(&mut c, &mut NoRoom, &mut FullRate, &data);
    assert_eq!(at(&c, counters::FLOW_INSERT_FAILURES), 2);
    assert_eq!(at(&c, counters::FLOW_INSERTS), 2);
}
