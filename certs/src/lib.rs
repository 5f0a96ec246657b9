//! meshd-certs: the mesh certificate authority and mTLS configuration.
//!
//! Owns: creating a mesh CA and issuing per-cluster bridge certificates with rcgen
//! ([`issue`]), the SAN scheme naming a cluster ([`names`]), rustls client/server configs
//! for QUIC links that verify peers against the mesh CA and the topology's clusters
//! ([`tls`]), and rotation of certificate files without restart ([`reload`]).
//!
//! Must not touch: QUIC connections themselves (federation/ owns them) or the topology.
#![forbid(unsafe_code)]

mod error;
pub mod issue;
pub mod names;
pub mod reload;
pub mod tls;

pub use error::CertError;
pub use issue::{
    create_ca, create_private_dir, init_ca_dir, issue_cluster_cert, issue_to_dir,
    ClusterCertRequest, PemPair, Validity,
};
pub use names::{cert_info, check_cluster_name, peer_cluster, CertInfo};
pub use reload::{CertPaths, CurrentCert, LoadPolicy, Loaded, ReloadingCerts, Watcher};
pub use tls::{
    authorize, client_config, server_config, server_name, AllowedClusters, MeshClientVerifier,
    MeshServerVerifier, ALPN,
};
