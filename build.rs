//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and feeds the
//! descriptors to tonic's codegen. The encoded descriptor set is also written to
//! OUT_DIR so the server can offer gRPC reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proofgate/v1/types.proto",
    "proofgate/v1/department.proto",
    "proofgate/v1/application.proto",
    "proofgate/v1/registry.proto",
    "proofgate/v1/audit.proto",
    "proofgate/v1/operations.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("proofgate_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
