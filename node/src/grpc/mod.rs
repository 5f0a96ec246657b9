//! The node's gRPC API (`meshd.v1.EventMesh`, CloudEvents protobuf format) beside its HTTP
//! API, on its own address (`--grpc-listen`: the HTTP listener speaks HTTP/1.1 only).
//!
//! Owns: the tonic server of a node ([`serve`]), its auth (the internal token, as the
//! HTTP API checks it), the mapping of the HTTP API's errors to gRPC status codes
//! ([`status_of`]), and the streams ([`service`]; the `Subscribe` stream's state is the
//! sans-IO [`session::Session`]).
//!
//! Must not know: how events are parsed, validated and stored (the HTTP publish path's
//! shared half, [`crate::http::store_published`], and [`meshd_proto::convert`]), or how
//! pull leases work ([`crate::delivery`]): every call goes through the same functions as
//! its HTTP counterpart.

pub mod service;
pub mod session;

use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use meshd_proto::v1::event_mesh_server::EventMeshServer;
use tokio::net::TcpListener;
use tonic::{Code, Status};

use crate::http::ApiError;
use crate::server::Node;

/// Metadata key carrying the HTTP API's error code (`missing_attribute`, ...).
pub const ERROR_CODE_KEY: &str = "meshd-error-code";
/// Metadata key carrying the field at fault, when there is one.
pub const ERROR_FIELD_KEY: &str = "meshd-error-field";

/// Why the gRPC server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    /// The reflection service could not be built from the file descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The gRPC code of an HTTP API status.
pub fn code_of(status: StatusCode) -> Code {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::CONFLICT => Code::FailedPrecondition,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The gRPC status of an HTTP API error: the code mapped by [`code_of`], the message
/// naming the field at fault first (`source: ...`), the HTTP API's error code and field
/// in the metadata ([`ERROR_CODE_KEY`], [`ERROR_FIELD_KEY`]).
pub fn status_of(e: &ApiError) -> Status {
    let detail = &e.body().error;
    let message = match &detail.field {
        Some(f) => format!("{f}: {}", detail.message),
        None => detail.message.clone(),
    };
    let mut status = Status::new(code_of(e.status()), message);
    if let Ok(v) = detail.code.parse() {
        status.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    if let Some(Ok(v)) = detail.field.as_deref().map(str::parse) {
        status.metadata_mut().insert(ERROR_FIELD_KEY, v);
    }
    status
}

/// The [`crate::server::NodeConfig::internal_token`] check of the HTTP API, on gRPC
/// metadata (`meshd-internal-token` or `authorization: Bearer ...`).
fn check_token(node: &Node, req: &tonic::Request<()>) -> Result<(), Status> {
    let Some(token) = &node.config.internal_token else {
        return Ok(());
    };
    let md = req.metadata();
    let admitted = token.admits(
        md.get(meshd_core::internal::HEADER).map(|v| v.as_bytes()),
        md.get("authorization").map(|v| v.as_bytes()),
    );
    if admitted {
        Ok(())
    } else {
        node.metrics.unauthenticated.inc();
        tracing::info!("gRPC call refused: no internal token");
        Err(Status::unauthenticated(
            "this node takes calls from its cluster's proxies or with the cluster's internal token (metadata authorization: Bearer TOKEN)",
        ))
    }
}

/// The status a request that does not decode gets: tonic answers a message over the
/// decoding limit with OUT_OF_RANGE and one that is not the message protobuf with
/// INTERNAL, both before any handler runs; the API answers them as the HTTP API does a
/// body too large (413: RESOURCE_EXHAUSTED) or unreadable (400: INVALID_ARGUMENT).
fn decode_code(code: Code, message: &str) -> Option<Code> {
    match code {
        Code::OutOfRange if message.contains("message length too large") => {
            Some(Code::ResourceExhausted)
        }
        Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            Some(Code::InvalidArgument)
        }
        _ => None,
    }
}

/// [`decode_code`] on an answer before any handler ran (status in the headers).
fn fix_decode_response<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32);
    let message = resp
        .headers()
        .get("grpc-message")
        .map(|v| percent_decoded(v.as_bytes()))
        .unwrap_or_default();
    if let Some(fixed) = code.and_then(|c| decode_code(c, &message)) {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from(fixed as i32));
    }
    resp
}

/// `grpc-message` is percent-encoded; the words matched are plain ASCII.
fn percent_decoded(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace("%20", " ")
}

/// [`decode_code`] inside a stream (where tonic hands the error to the handler).
pub(crate) fn fix_decode_status(status: Status) -> Status {
    match decode_code(status.code(), status.message()) {
        Some(code) => Status::new(code, status.message().to_string()),
        None => status,
    }
}

/// Serves the gRPC API of `node` on `listener` (with server reflection) until `shutdown`
/// resolves. A message is at most the node's body limit
/// ([`crate::server::NodeConfig::max_body_bytes`]).
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
    let limit = node.config.max_body_bytes;
    let auth_node = node.clone();
    let mesh = EventMeshServer::new(service::EventMesh::new(node))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let mesh = tonic::service::interceptor::InterceptedService::new(mesh, move |req| {
        check_token(&auth_node, &req).map(|()| req)
    });
    // Reflection stays open like /openapi.json: it shows the schema, no data.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meshd_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meshd_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(fix_decode_response))
        .add_service(mesh)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_map_to_grpc_codes_with_the_field() {
        let e: ApiError = meshd_core::api::InvalidField {
            field: "topic".into(),
            message: "bad".into(),
        }
        .into();
        let s = status_of(&e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "topic: bad");
        assert_eq!(s.metadata().get(ERROR_FIELD_KEY).unwrap(), "topic");
        assert_eq!(code_of(StatusCode::NOT_FOUND), Code::NotFound);
        assert_eq!(
            code_of(StatusCode::PAYLOAD_TOO_LARGE),
            Code::ResourceExhausted
        );
        assert_eq!(code_of(StatusCode::SERVICE_UNAVAILABLE), Code::Unavailable);
    }

    #[test]
    fn undecodable_requests_get_client_error_codes() {
        let answer = |status: &str, message: &str| {
            let resp = http::Response::builder()
                .header("grpc-status", status)
                .header("grpc-message", message)
                .body(())
                .unwrap();
            fix_decode_response(resp).headers()["grpc-status"]
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            answer(
                "11",
                "Error,%20decoded%20message%20length%20too%20large:%20found%205%20bytes"
            ),
            "8"
        );
        assert_eq!(
            answer("13", "failed%20to%20decode%20Protobuf%20message:%20x"),
            "3"
        );
        assert_eq!(answer("11", "offset out of range"), "11");
        assert_eq!(answer("13", "store broke"), "13");
        let s = fix_decode_status(Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes",
        ));
        assert_eq!(s.code(), Code::ResourceExhausted);
    }
}
