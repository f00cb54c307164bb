//! Writes the seed corpora: `fuzz-seeds DIR` fills DIR/packet, DIR/pcap and
//! DIR/record from the test frames, and DIR/web_config from the committed samples
//! (tests/fuzz/seeds/web_config).

use std::{fs, path::Path};

// The fuzz build instruments every crate for libFuzzer's coverage; this binary has a
// main of its own but links libFuzzer's runtime for those hooks.
use libfuzzer_sys as _;

fn write(dir: &Path, name: &str, seeds: &[Vec<u8>]) -> std::io::Result<()> {
    let d = dir.join(name);
    fs::create_dir_all(&d)?;
    for (i, s) in seeds.iter().enumerate() {
        fs::write(d.join(format!("seed-{i:03}")), s)?;
    }
    println!("{name}: {} seeds", seeds.len());
    Ok(())
}

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: fuzz-seeds DIR");
        std::process::exit(2);
    };
    let dir = Path::new(&dir);
    write(dir, "packet", &tcpmon_fuzz::packet_seeds())?;
    write(dir, "pcap", &tcpmon_fuzz::pcap_seeds())?;
    write(dir, "record", &tcpmon_fuzz::record_seeds())?;
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/web_config");
    let mut web = Vec::new();
    let mut names: Vec<_> = fs::read_dir(&samples)?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        web.push(fs::read(e.path())?);
    }
    write(dir, "web_config", &web)
}
