//! meshd-proto: the gRPC wire types of meshd and their conversion to the event model.
//!
//! Owns: the shipped .proto files (`proto/io/cloudevents/v1/cloudevents.proto`, the
//! CloudEvents spec's protobuf format, and `proto/meshd/v1/meshd.proto`, the
//! `meshd.v1.EventMesh` service), the code generated from them (messages, client and
//! server stubs), the file descriptor set for server reflection, and the one place where a
//! protobuf `CloudEvent` becomes a [`meshd_core::Event`] and back ([`convert`]).
//!
//! Must not know: the node, stores or delivery; clients depend on this crate without
//! compiling a server.
//!
//! # Layout
//! - [`cloudevents`]: `io.cloudevents.v1` (`CloudEvent`, `CloudEventBatch`).
//! - [`v1`]: `meshd.v1` (`EventMesh` client and server, requests and answers).
//! - [`convert`]: protobuf `CloudEvent` <-> [`meshd_core::Event`].
#![forbid(unsafe_code)]

pub mod convert;

/// The protobuf packages, nested as their names are (generated code refers to the other
/// package by its path).
#[allow(missing_docs, clippy::all)]
pub mod io {
    pub mod cloudevents {
        pub mod v1 {
            tonic::include_proto!("io.cloudevents.v1");
        }
    }
}

/// The `meshd.*` protobuf packages.
#[allow(missing_docs, clippy::all)]
pub mod meshd {
    pub mod v1 {
        tonic::include_proto!("meshd.v1");
    }
}

/// `io.cloudevents.v1`: the CloudEvents protobuf format.
pub use io::cloudevents::v1 as cloudevents;
/// `meshd.v1`: the meshd gRPC service.
pub use meshd::v1;

/// The encoded `FileDescriptorSet` of every shipped .proto (for server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("meshd_descriptor");

/// The full name of the meshd service, as gRPC and reflection name it.
pub const SERVICE_NAME: &str = "meshd.v1.EventMesh";
