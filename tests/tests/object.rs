//! The embedded kernel object itself: no calls the verifier would reject. LLVM may
//! lower struct copies and zeroing to memcpy/memset calls, which BPF cannot link;
//! such a relocation means a program would fail to load on some kernels or when
//! loaded without CAP_SYS_ADMIN.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

#[test]
fn programs_relocate_only_against_maps_and_data() {
    let data = monitor::ebpf::MONITOR_OBJECT;
    if let Some(why) = monitor::ebpf::missing_reason() {
        panic!("this build has no eBPF object ({why}): run `bash xtask/bootstrap.sh setup`");
    }
    let obj = object::File::parse(data).expect("valid ELF");
    let programs = ["xdp", "classifier"];
    let mut checked = 0;
    for section in obj.sections() {
        let name = section.name().unwrap_or("");
        if !programs.contains(&name) {
            continue;
        }
        // The kernel log programs (`--kernel-log`) may call functions: aya-log copies
        // its strings through a memcpy of run-time length, a BPF-to-BPF call into
        // .text (a symbol with a section is one the object defines). Only they; the packet
        // programs keep the rule whole.
        let log_programs: Vec<(u64, u64)> = obj
            .symbols()
            .filter(|s| s.section_index() == Some(section.index()))
            .filter(|s| s.name().is_ok_and(|n| n.starts_with("tcpmon_log_")))
            .map(|s| (s.address(), s.address() + s.size()))
            .collect();
        for (offset, rel) in section.relocations() {
            let object::RelocationTarget::Symbol(idx) = rel.target() else {
                panic!("{name}: relocation without a symbol");
            };
            let sym = obj.symbol_by_index(idx).unwrap();
            let target = sym
                .section_index()
                .and_then(|i| obj.section_by_index(i).ok())
                .map(|s| s.name().unwrap_or("").to_string())
                .unwrap_or_default();
            // Maps and global data (.rodata/.data/.bss become maps at load time) are
            // fine; anything in .text is a function call the verifier cannot take.
            let data = ["maps", ".maps", ".rodata", ".data", ".bss"];
            let in_log_program = log_programs
                .iter()
                .any(|(start, end)| (*start..*end).contains(&offset));
            if target == ".text" && in_log_program {
                continue;
            }
            assert!(
                data.iter()
                    .any(|d| target == *d || target.starts_with(&format!("{d}."))),
                "{name}: relocation against {} in section {target:?} (stray libcall?)",
                sym.name().unwrap_or("?")
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected relocations for the three maps, saw {checked}"
    );
    // The programs exist under the names the loader uses.
    let names: Vec<&str> = obj
        .symbols()
        .filter(|s| {
            s.section_index()
                .and_then(|i| obj.section_by_index(i).ok())
                .is_some_and(|s| {
                    s.kind() == SectionKind::Text && programs.contains(&s.name().unwrap_or(""))
                })
        })
        .filter_map(|s| s.name().ok())
        .collect();
    for want in ["tcpmon_xdp", "tcpmon_tc_ingress", "tcpmon_tc_egress"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}
