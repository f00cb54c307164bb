//! Telling systemd how the service is doing (`Type=notify`): READY once the programs
//! are attached, the listener is up and the table is seeded; STOPPING at a stop
//! signal, while tcpmon detaches. Outside systemd (no NOTIFY_SOCKET) these do nothing.

use sd_notify::NotifyState;

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("detaching")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
