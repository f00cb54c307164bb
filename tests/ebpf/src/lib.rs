#![no_std]
// This file exists to enable the library target: tests/build.rs names this crate as a
// build-dependency so cargo rebuilds the lab object when it changes (see aya-template
// and aya's test/integration-ebpf).
