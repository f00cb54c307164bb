//! Reorders and delays packets on the path, as a real network does, for the
//! reordering tests: an iptables NFQUEUE rule sends packets here (this kernel has
//! the xt NFQUEUE target but no nft queue, and no netem).
//!
//!   tcpmon-delay QUEUE SECONDS [--swap-every N] [--hold-every M] [--hold-ms MS]
//!
//! Every Nth packet is held until the next one has passed (or 2 ms went by): a
//! swapped pair, out of order within a round trip. Every Mth packet is held for MS
//! milliseconds: late enough for the sender to retransmit it. Everything is
//! accepted, nothing is dropped or changed. Bounded by SECONDS; the queue is bound
//! fail-open, so packets pass when this program is gone. Prints `key=value` counts.

use std::time::{Duration, Instant};

use nfq::{Message, Queue, Verdict};

fn opt(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn accept(q: &mut Queue, mut m: Message) {
    m.set_verdict(Verdict::Accept);
    q.verdict(m).expect("verdict");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num: u16 = args[0].parse().expect("queue number");
    let seconds: f64 = args[1].parse().expect("seconds");
    let swap_every = opt(&args, "--swap-every", 5);
    let hold_every = opt(&args, "--hold-every", 0);
    let hold = Duration::from_millis(opt(&args, "--hold-ms", 50));

    let mut q = Queue::open().expect("open the netfilter queue (needs CAP_NET_ADMIN)");
    q.bind(num).expect("bind the queue");
    q.set_fail_open(num, true).expect("fail-open");
    q.set_nonblocking(true);
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut seen, mut swapped, mut held) = (0u64, 0u64, 0u64);
    let mut waiting: Option<(Message, Instant)> = None;
    let mut late: Vec<(Message, Instant)> = Vec::new();
    while Instant::now() < deadline || waiting.is_some() || !late.is_empty() {
        let now = Instant::now();
        if let Some(i) = late.iter().position(|(_, at)| *at <= now) {
            let (m, _) = late.swap_remove(i);
            accept(&mut q, m);
            continue;
        }
        if waiting.as_ref().is_some_and(|(_, at)| *at <= now) {
            let (m, _) = waiting.take().expect("waiting");
            accept(&mut q, m);
        }
        let m = match q.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if now >= deadline {
                    // Past the deadline only what is held is let go, now.
                    if let Some((m, _)) = waiting.take() {
                        accept(&mut q, m);
                    }
                    for (m, _) in late.drain(..) {
                        accept(&mut q, m);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            Err(e) => panic!("receiving from the queue: {e}"),
        };
        seen += 1;
        if hold_every > 0 && seen % hold_every == 0 && now < deadline {
            held += 1;
            late.push((m, now + hold));
        } else if swap_every > 0 && seen % swap_every == 0 && waiting.is_none() && now < deadline {
            swapped += 1;
            waiting = Some((m, now + Duration::from_millis(2)));
        } else {
            accept(&mut q, m);
            // The held one goes right behind the packet that overtook it.
            if let Some((w, _)) = waiting.take() {
                accept(&mut q, w);
            }
        }
    }
    let _ = q.unbind(num);
    println!("seen={seen} swapped={swapped} held={held}");
}
