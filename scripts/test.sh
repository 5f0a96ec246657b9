#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian packages
# and PyPI packages), checks formatting and lints, then runs every test.
# Usage: scripts/test.sh            (CI runs exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
# A build from a fresh clone gains nothing from incremental compilation, whose cache is
# about 9 GB for this workspace (a CI run once failed on a full disk): off unless the
# caller sets it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: etcd, nats-server, nftables and iproute2 (network namespaces and link
# faults in chaos-tests/), faketime (libfaketime: the clock-skew chaos scenario). No protoc:
# the build uses the one shipped in the protoc-bin-vendored crate (.cargo/config.toml).
need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# PyPI: the official CloudEvents SDK (interop tests).
if ! python3 -c "import cloudevents.core.bindings.http" >/dev/null 2>&1; then
  echo "installing the Python cloudevents SDK"
  python3 -m pip install -q --disable-pip-version-check 'cloudevents>=2.2,<3'
fi
# PyPI: the pulsar-lite broker (Pulsar store tests) and the official Pulsar client (interop).
if ! python3 -c "import pulsar_lite, pulsar" >/dev/null 2>&1; then
  echo "installing pulsar-lite and pulsar-client"
  python3 -m pip install -q --disable-pip-version-check pulsar-lite pulsar-client
fi

# PyPI: grpcio, grpcio-tools (stubs from the shipped .proto) and grpcio-reflection, the
# gRPC client of tests/grpc.rs.
if ! python3 -c "import grpc, grpc_tools, grpc_reflection.v1alpha.reflection_pb2_grpc" >/dev/null 2>&1; then
  echo "installing grpcio, grpcio-tools and grpcio-reflection"
  python3 -m pip install -q --disable-pip-version-check grpcio grpcio-tools grpcio-reflection
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

# The build must not need a system protoc (a fresh machine has none): as root, hide any
# installed one behind /dev/null for the whole first build. On a fresh clone this build
# runs every build script, so the vendored protoc is what compiles the .proto files.
echo "== cargo build (system protoc hidden)"
sys_protoc="$(command -v protoc || true)"
if [ -n "$sys_protoc" ] && [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null 2>&1; then
  unshare -m sh -c "mount --bind /dev/null '$sys_protoc' && ! '$sys_protoc' --version >/dev/null 2>&1 && cargo build --workspace --all-targets"
else
  cargo build --workspace --all-targets
fi
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# The stable-toolchain fuzz targets (core/tests/fuzz_parsers.rs, node/tests/fuzz_pulsar.rs)
# run 50,000 inputs per parser here (~45 s in all); a plain `cargo test` runs 3,000.
export MESHD_FUZZ_CASES="${MESHD_FUZZ_CASES:-50000}"
cargo test --workspace
