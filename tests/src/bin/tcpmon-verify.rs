//! Prints, one JSON line per program, how much work the verifier of the running
//! kernel does on tcpmon's programs (`cargo xtask kernel-matrix` runs it in each
//! guest; `cargo xtask bench` on the host). Exits 1 if any program is refused.

fn main() -> anyhow::Result<()> {
    monitor::preflight::raise_memlock();
    let verdicts = tests::verifier::verify_all()?;
    let mut refused = false;
    for v in &verdicts {
        refused |= !v.loaded;
        println!("{}", v.to_json());
    }
    if refused {
        std::process::exit(1);
    }
    Ok(())
}
