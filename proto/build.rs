//! Generates the gRPC types and service code from the shipped .proto files, with the
//! protoc of the `protoc-bin-vendored` crate (no system protoc needed), and writes the
//! file descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        PathBuf::from("io/cloudevents/v1/cloudevents.proto"),
        PathBuf::from("meshd/v1/meshd.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("meshd_descriptor.bin"))
        .compile_with_config(config, &protos, &[PathBuf::from("."), well_known])?;
    Ok(())
}
