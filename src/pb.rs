//! The generated gRPC contract, package `proofgate.v1`.

#![allow(clippy::all, missing_docs)] // generated code

tonic::include_proto!("proofgate.v1");

/// Encoded FileDescriptorSet of every proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/proofgate_descriptor.bin"));
