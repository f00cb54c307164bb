//! Types and pure packet logic shared by tcpmon's kernel programs, the live agent and
//! pcap replay. Everything here is `no_std` so that the three cannot disagree: the
//! parser, the flow key and the emit policy run unchanged in the eBPF programs and on
//! the host, where they are unit-tested.
#![no_std]

pub mod counters;
pub mod datapath;
pub mod event;
pub mod flags;
pub mod flow;
pub mod klog;
pub mod parse;
pub mod seq;
pub mod sets;
pub mod syn;

#[cfg(any(test, feature = "user"))]
pub mod frames;

pub use event::TcpEvent;
pub use flow::{FlowKey, FlowState};
pub use parse::{ParseError, TcpPacket};

#[cfg(any(test, feature = "user"))]
extern crate std;
