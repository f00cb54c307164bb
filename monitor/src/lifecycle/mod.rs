//! The connection lifecycle engine: events in, connection lifecycles out.

pub mod conn;
pub mod state;
