//! The connection lifecycle engine: events in, connection lifecycles out. The live
//! agent and `tcpmon replay` run the same engine.

pub mod conn;
pub mod engine;
pub mod metrics;
pub mod ports;
pub mod record;
pub mod state;
mod timers;

pub use engine::{ActivityProbe, Config, Direction, Engine, NoProbe, Role, Sink};
pub use state::TcpState;
