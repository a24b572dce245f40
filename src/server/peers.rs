//! Calls from this node to the other nodes of its cluster: reading an
//! application from the node that owns it (a retry of a request another node
//! decided). Mutual TLS with this node's own certificate; the call names the
//! hall it acts for in [`ON_BEHALF_OF_HEADER`], which the owner honours only
//! from a gateway identity. The owner's address comes from the node
//! directory in etcd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::cluster::{ClusterError, Reservations};
use crate::pb::application_service_client::ApplicationServiceClient;
use crate::pb::department_registry_client::DepartmentRegistryClient;
use crate::pb::{
    Application, CompleteVerificationRequest, CompleteVerificationResponse, GetApplicationRequest,
    WatchApplicationRequest,
};
use crate::security::tls::NodeTls;
use crate::security::{GATEWAY_IDENTITY, ON_BEHALF_OF_HEADER, PLAINTEXT_IDENTITY_HEADER};

/// Bound on one call to another node.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// The other nodes, by node id: one lazily connected channel per address.
#[derive(Clone)]
pub(super) struct Peers {
    tls: Option<NodeTls>,
    /// The identity this node presents (its certificate's name).
    identity: String,
    reservations: Reservations,
    channels: Arc<Mutex<HashMap<String, (String, Channel)>>>,
}

/// What went wrong reaching a node, for [`ClusterError::OwnerUnreachable`].
pub(super) struct Unreachable(pub String);

impl Peers {
    pub(super) fn new(tls: Option<NodeTls>, identity: String, reservations: Reservations) -> Self {
        Self {
            tls,
            identity,
            reservations,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The certificate name another node must present: its own
    /// `<node-id>.gateway.proofgate` when this node has one of a shared PKI
    /// (`serve --certs DIR`), so a call reaches that node and no other;
    /// `gateway.proofgate` when nodes share a development PKI without node
    /// certificates.
    fn server_identity(&self, node_id: &str) -> String {
        if self.identity == GATEWAY_IDENTITY {
            GATEWAY_IDENTITY.to_owned()
        } else {
            crate::security::node_identity(node_id)
        }
    }

    async fn channel(&self, node_id: &str) -> Result<Channel, Unreachable> {
        let address = self
            .reservations
            .owner_address(node_id)
            .await
            .map_err(|e| Unreachable(format!("the node directory cannot be read: {e}")))?
            .ok_or_else(|| Unreachable("it is not in the node directory (down?)".into()))?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, channel)) = channels.get(node_id) {
            if *known == address {
                return Ok(channel.clone());
            }
        }
        // One way for a node to reach another (mirrors use it too).
        let channel = super::mirror::node_channel_expecting(
            &address,
            self.tls.as_ref(),
            &self.server_identity(node_id),
        )
        .map_err(|problem| Unreachable(format!("its address `{address}`: {problem}")))?;
        channels.insert(node_id.to_owned(), (address, channel.clone()));
        Ok(channel)
    }

    fn on_behalf<T>(&self, message: T, caller: &str) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(PEER_TIMEOUT);
        if let Ok(value) = caller.parse() {
            request.metadata_mut().insert(ON_BEHALF_OF_HEADER, value);
        }
        if self.tls.is_none() {
            // Plaintext development mode: name this node as the caller.
            if let Ok(value) = self.identity.parse() {
                request
                    .metadata_mut()
                    .insert(PLAINTEXT_IDENTITY_HEADER, value);
            }
        }
        request
    }

    fn unreachable(owner: &str, what: &str, reason: String) -> Status {
        ClusterError::OwnerUnreachable {
            owner: owner.to_owned(),
            what: what.to_owned(),
            reason,
        }
        .into()
    }

    /// The owner's answer as it is, except that a node that cannot be
    /// reached (or is shutting down) is [`ClusterError::OwnerUnreachable`].
    pub(super) fn owner_status(owner: &str, what: &str, status: Status) -> Status {
        if matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
        ) {
            Self::unreachable(owner, what, status.message().to_owned())
        } else {
            status
        }
    }

    async fn client(
        &self,
        owner: &str,
        what: &str,
    ) -> Result<ApplicationServiceClient<Channel>, Status> {
        self.channel(owner)
            .await
            .map(ApplicationServiceClient::new)
            .map_err(|Unreachable(why)| Self::unreachable(owner, what, why))
    }

    /// GetApplication at its owner, for `caller`. The owner's own refusals
    /// (not found, not this hall's) come back as they are; a node that
    /// cannot be reached is [`ClusterError::OwnerUnreachable`] naming `what`.
    pub(super) async fn get_application(
        &self,
        owner: &str,
        what: &str,
        application_id: &str,
        caller: &str,
    ) -> Result<Application, Status> {
        let request = self.on_behalf(
            GetApplicationRequest {
                application_id: application_id.to_owned(),
            },
            caller,
        );
        self.client(owner, what)
            .await?
            .get_application(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|status| Self::owner_status(owner, what, status))
    }

    /// WatchApplication at its owner, for `caller`: its stream, each item
    /// as the owner sends it. No timeout: a watch lasts until the
    /// application is final or the watcher leaves.
    pub(super) async fn watch_application(
        &self,
        owner: &str,
        application_id: &str,
        caller: &str,
    ) -> Result<tonic::Streaming<Application>, Status> {
        let what = format!("application {application_id}");
        let mut request = self.on_behalf(
            WatchApplicationRequest {
                application_id: application_id.to_owned(),
            },
            caller,
        );
        // on_behalf bounds unary calls; a watch is open-ended.
        request.metadata_mut().remove("grpc-timeout");
        self.client(owner, &what)
            .await?
            .watch_application(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|status| Self::owner_status(owner, &what, status))
    }

    /// CompleteVerification at `node`, for the department `caller`.
    pub(super) async fn complete_verification(
        &self,
        node: &str,
        what: &str,
        request: CompleteVerificationRequest,
        caller: &str,
    ) -> Result<CompleteVerificationResponse, Status> {
        let channel = self
            .channel(node)
            .await
            .map_err(|Unreachable(why)| Self::unreachable(node, what, why))?;
        DepartmentRegistryClient::new(channel)
            .complete_verification(self.on_behalf(request, caller))
            .await
            .map(|r| r.into_inner())
            .map_err(|status| Self::owner_status(node, what, status))
    }
}
