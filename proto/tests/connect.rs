//! `connect_unix` against a real tonic server on a real Unix socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use plinth_csi_proto::connect_unix;
use plinth_csi_proto::v1::identity_client::IdentityClient;
use plinth_csi_proto::v1::identity_server::{Identity, IdentityServer};
use plinth_csi_proto::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, ProbeRequest, ProbeResponse,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

struct Fixed;

#[tonic::async_trait]
impl Identity for Fixed {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: "test.csi.plinth.dev".into(),
            vendor_version: "1.2.3".into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse::default()))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

#[tokio::test]
async fn connect_unix_reaches_a_server_on_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(Fixed))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );

    let channel = connect_unix(&socket).await.expect("connects");
    let mut client = IdentityClient::new(channel);
    let info = client
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "test.csi.plinth.dev");
    assert_eq!(info.vendor_version, "1.2.3");
    let probe = client.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));

    server.abort();
}

#[tokio::test]
async fn connect_unix_reports_a_missing_socket() {
    let dir = tempfile::tempdir().unwrap();
    let err = connect_unix(dir.path().join("absent.sock")).await;
    assert!(
        err.is_err(),
        "connecting to a socket that does not exist must fail"
    );
}
