//! Prints, one JSON line per program, how much work the verifier of the running
//! kernel does on tcpmon's programs (`cargo xtask kernel-matrix` runs it in each
//! guest; `cargo xtask bench` on the host): once as tcpmon loads them by default,
//! then with every kernel log message site live (`--kernel-log debug`; names end in
//! `+log`), which must stay within the same headroom. Exits 1 if any program is
//! refused.

use monitor::loader::KernelLog;

fn main() -> anyhow::Result<()> {
    monitor::preflight::raise_memlock();
    let mut refused = false;
    for level in [KernelLog::Off, KernelLog::Debug] {
        for v in &tests::verifier::verify_all(level)? {
            refused |= !v.loaded;
            println!("{}", v.to_json());
        }
    }
    if refused {
        std::process::exit(1);
    }
    Ok(())
}
