use which::which;

/// Building this crate has an undeclared dependency on the `bpf-linker` binary; rebuild
/// when it changes (the same imperfect cache key aya-template uses).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH"),
    }
}
