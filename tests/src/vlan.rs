//! VLAN tagging between lab namespaces without the 8021q module: the lab programs
//! push tags on one side's egress and pop them on the other side's ingress.

use std::os::fd::AsRawFd;

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TcAttachType},
};

use crate::{lab::Lab, run};

/// Keeps the lab programs attached until dropped.
pub struct Tagging {
    _objects: Vec<Ebpf>,
}

/// Loads `program` from the lab object with `globals` (name, native-endian bytes)
/// overridden and attaches it to `iface`'s `hook` inside `ns`; detached when the
/// returned object is dropped.
pub(crate) fn attach_lab_program(
    ns: &str,
    iface: &str,
    program: &'static str,
    hook: TcAttachType,
    globals: Vec<(&'static str, Vec<u8>)>,
) -> Ebpf {
    let ns = ns.to_string();
    let iface = iface.to_string();
    // setns(CLONE_NEWNET) affects only the calling thread: do it in a throwaway one.
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
        // SAFETY: valid namespace fd; only this thread changes namespace.
        assert_eq!(
            unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns"
        );
        if let Some(why) = crate::lab_missing_reason() {
            panic!("this build has no lab object ({why}): run `bash xtask/bootstrap.sh setup`");
        }
        let mut loader = EbpfLoader::new();
        for (name, bytes) in &globals {
            loader.override_global(name, bytes.as_slice(), true);
        }
        let mut bpf = loader.load(crate::LAB_OBJECT).expect("load lab object");
        let prog: &mut SchedClassifier = bpf.program_mut(program).unwrap().try_into().unwrap();
        prog.load().expect("load lab program");
        let ifindex = monitor::iface::index_of(&iface).expect("lab interface");
        prog.attach(ifindex, hook).expect("attach lab program");
        bpf
    })
    .join()
    .expect("lab attach thread")
}

/// Loads a VLAN program with its tag IDs and attaches it to `iface` inside `ns`.
fn attach_in(
    ns: &str,
    iface: &str,
    program: &'static str,
    hook: TcAttachType,
    inner: u16,
    outer: u16,
) -> Ebpf {
    attach_lab_program(
        ns,
        iface,
        program,
        hook,
        vec![
            ("LAB_VLAN_INNER", inner.to_ne_bytes().to_vec()),
            ("LAB_VLAN_OUTER", outer.to_ne_bytes().to_vec()),
        ],
    )
}

impl Tagging {
    /// Tags everything the server sends with `inner` (802.1Q) and, if non-zero,
    /// `outer` (802.1ad) on top; the client pops them after its XDP hook.
    pub fn server_to_client(lab: &Lab, inner: u16, outer: u16) -> Tagging {
        // The tag must travel in the frame, not in skb metadata.
        run(lab.cmd(&lab.server, "ethtool").args([
            "-K",
            lab.server_if,
            "txvlan",
            "off",
            "tx-vlan-stag-hw-insert",
            "off",
        ]));
        let push = attach_in(
            &lab.server,
            lab.server_if,
            "lab_vlan_push",
            TcAttachType::Egress,
            inner,
            outer,
        );
        let pop = attach_in(
            &lab.client,
            lab.client_if,
            "lab_vlan_pop",
            TcAttachType::Ingress,
            0,
            0,
        );
        Tagging {
            _objects: vec![push, pop],
        }
    }
}
