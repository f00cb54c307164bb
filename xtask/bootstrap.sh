#!/usr/bin/env bash
# Installs, idempotently, everything tcpmon needs on a fresh Debian/Ubuntu host, then
# hands over to `cargo xtask`. This is a shell script (not xtask code) because cargo
# itself cannot start until the pinned toolchain exists (RUSTUP_AUTO_INSTALL may be 0).
#
#   bash xtask/bootstrap.sh run  [-- tcpmon args]   build and run the monitor
#   bash xtask/bootstrap.sh test                     install test deps, run every test
#   bash xtask/bootstrap.sh bench                    run the benchmarks
#   bash xtask/bootstrap.sh demo                     the SYN-flood demo in a lab
#   bash xtask/bootstrap.sh setup                    only install toolchains
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STABLE=$(sed -nE 's/^channel *= *"([^"]+)".*/\1/p' rust-toolchain.toml)
NIGHTLY=$(sed -nE 's/^pub const EBPF_NIGHTLY: &str = "([^"]+)";/\1/p' monitor/build.rs)
BPF_LINKER_VERSION=0.13.0
export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export PATH="$CARGO_HOME/bin:$PATH"

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

need_root_for_apt() {
    if [ "$(id -u)" -ne 0 ]; then
        log "installing Debian packages needs root: run this as root (sudo bash $0 $*)"
        exit 1
    fi
}

apt_install() {
    local missing=()
    local status
    for p in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    need_root_for_apt
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # wireshark-common asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_rustup() {
    if ! command -v rustup >/dev/null 2>&1; then
        apt_install curl ca-certificates
        log "installing rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
    fi
    rustup set auto-self-update disable >/dev/null 2>&1 || true
}

# Checks read whole outputs into variables: with pipefail, `cmd | grep -q` fails
# whenever grep exits before cmd has written everything (SIGPIPE).
installed_components() {
    rustup component list --toolchain "$1" --installed 2>/dev/null || true
}

install_toolchains() {
    local comps
    comps=$(installed_components "$STABLE")
    if [[ $comps != *clippy* || $comps != *rustfmt* ]]; then
        log "installing Rust $STABLE (userspace)"
        rustup toolchain install "$STABLE" --profile minimal --component clippy,rustfmt
    fi
    comps=$(installed_components "$NIGHTLY")
    if [[ $comps != *rust-src* || $comps != *clippy* ]]; then
        log "installing $NIGHTLY with rust-src (eBPF)"
        rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src,clippy
    fi
}

# bpf-linker must link against the same LLVM major as the nightly that emits the
# bitcode; the nightly ships its own libLLVM, so no system LLVM is needed.
install_bpf_linker() {
    local sys lib
    sys=$(rustup run "$NIGHTLY" rustc --print sysroot)
    lib=$(cd "$sys/lib" && ls libLLVM.so.* | head -1)
    if command -v bpf-linker >/dev/null 2>&1; then
        local version libs
        version=$(bpf-linker --version 2>/dev/null || true)
        libs=$(ldd "$(command -v bpf-linker)" 2>/dev/null || true)
        if [[ $version == *"$BPF_LINKER_VERSION"* && $libs == *"$sys/lib/$lib"* ]]; then
            return 0
        fi
    fi
    apt_install build-essential
    local major tmp
    major=$(echo "$lib" | sed -E 's/^libLLVM\.so\.([0-9]+)\..*/\1/')
    tmp=$(mktemp -d)
    mkdir -p "$tmp/prefix" "$tmp/link"
    ln -s "$sys/lib" "$tmp/prefix/lib"
    ln -s "$sys/lib/$lib" "$tmp/link/libLLVM.so"
    log "building bpf-linker $BPF_LINKER_VERSION against $lib (about 1-2 minutes)"
    LLVM_PREFIX="$tmp/prefix" RUSTFLAGS="-L native=$tmp/link" \
        rustup run "$NIGHTLY" cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked --force \
        --no-default-features --features "llvm-$major" --root "$CARGO_HOME"
    rm -rf "$tmp"
}

# The Kubernetes manifest tests (tests/tests/kubernetes.rs): kubernetes-validate (the
# API's OpenAPI schemas, shipped in the package) in its own venv, the Prometheus
# Operator's models (its CRD schemas) for the PodMonitor, runc and containerd to run
# tcpmon as the DaemonSet's container. Fixed paths, because the tests look there.
K8S_TOOLS=/opt/tcpmon-tools
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMETHEUS_OPERATOR_MODELS_VERSION=6.0.0
install_k8s_tools() {
    apt_install runc python3-venv
    local venv=$K8S_TOOLS/k8s have
    have=$("$venv/bin/kubernetes-validate" --version 2>/dev/null || true)
    if [[ $have != *"$KUBERNETES_VALIDATE_VERSION"* ]]; then
        log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
        python3 -m venv "$venv"
        # Its dependencies pinned too, as resolved when this was written.
        "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
            attrs==26.1.0 importlib_resources==7.1.0 jsonschema==4.26.0 \
            jsonschema-specifications==2025.9.1 packaging==26.4 PyYAML==6.0.4 \
            referencing==0.37.0 rpds-py==2026.9.1 typing_extensions==4.16.0
    fi
    # Debian's containerd, unpacked, not installed: the test runs a private daemon,
    # and installing the package would enable a system service.
    if [ ! -x "$K8S_TOOLS/containerd/usr/bin/ctr" ]; then
        log "unpacking Debian's containerd into $K8S_TOOLS/containerd"
        local tmp
        tmp=$(mktemp -d)
        (cd "$tmp" && { apt-get download containerd >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get download containerd >/dev/null; }; })
        dpkg-deb -x "$tmp"/containerd_*.deb "$K8S_TOOLS/containerd"
        rm -rf "$tmp"
    fi
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    local models=$K8S_TOOLS/npm/node_modules/@kubernetes-models/prometheus-operator/package.json
    have=$(cat "$models" 2>/dev/null || true)
    if [[ $have != *"\"version\": \"$PROMETHEUS_OPERATOR_MODELS_VERSION\""* ]]; then
        log "installing @kubernetes-models/prometheus-operator $PROMETHEUS_OPERATOR_MODELS_VERSION"
        mkdir -p "$K8S_TOOLS/npm"
        npm install -s --no-audit --no-fund --prefix "$K8S_TOOLS/npm" \
            "@kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS_VERSION"
    fi
}

# cargo-deb builds the Debian package; pinned, built once into $CARGO_HOME.
CARGO_DEB_VERSION=3.8.0
install_cargo_deb() {
    local version
    version=$(cargo deb --version 2>/dev/null || true)
    [[ $version == *"$CARGO_DEB_VERSION"* ]] && return 0
    log "building cargo-deb $CARGO_DEB_VERSION (about a minute)"
    cargo install "cargo-deb@$CARGO_DEB_VERSION" --locked --root "$CARGO_HOME"
}

# cargo-fuzz drives the fuzz targets (cargo xtask fuzz, and the smoke in cargo xtask
# test) with the pinned nightly; pinned, built once into $CARGO_HOME.
CARGO_FUZZ_VERSION=0.13.2
install_cargo_fuzz() {
    local version
    version=$(cargo fuzz --version 2>/dev/null || true)
    [[ $version == *"$CARGO_FUZZ_VERSION"* ]] && return 0
    log "building cargo-fuzz $CARGO_FUZZ_VERSION (about a minute)"
    cargo install "cargo-fuzz@$CARGO_FUZZ_VERSION" --locked --root "$CARGO_HOME"
}

install_test_deps() {
    apt_install iproute2 tcpdump tshark bpftool prometheus ethtool util-linux procps iperf3 nftables hping3
    # The reordering test queues segments to a delayer through an iptables NFQUEUE rule.
    apt_install iptables
    # The kernel matrix (cargo xtask kernel-matrix): TCG guests, their busybox
    # initramfs, and the key Debian's kernel packages are signed with (not on Ubuntu).
    apt_install qemu-system-x86 busybox-static cpio debian-archive-keyring
    # The Debian package and its service in a bookworm guest (cargo xtask systemd-vm):
    # the guest's root filesystem, lintian, readelf for the debug-symbol split.
    apt_install debootstrap lintian e2fsprogs binutils
    install_cargo_deb
    install_cargo_fuzz
    install_k8s_tools
}

setup() {
    install_rustup
    install_toolchains
    install_bpf_linker
}

cmd=${1:-run}
shift || true
case "$cmd" in
    setup) setup ;;
    run)
        setup
        [ "${1:-}" = "--" ] && shift
        exec cargo xtask run -- "$@"
        ;;
    test)
        setup
        install_test_deps
        exec cargo xtask test "$@"
        ;;
    bench)
        setup
        install_test_deps
        exec cargo xtask bench "$@"
        ;;
    demo)
        setup
        install_test_deps
        exec cargo xtask demo "$@"
        ;;
    *) log "unknown command '$cmd' (run | test | bench | demo | setup)"; exit 2 ;;
esac
