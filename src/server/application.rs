//! ApplicationService over gRPC: a thin layer over [`Gateway`]: who may
//! call what, and the gateway's errors mapped in [`super::status`].

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::status::invalid_field;
use crate::gateway::{is_final, receipt_index, Gateway, GatewayError};
use crate::metrics::Metrics;
use crate::pb::application_service_server::ApplicationService;
use crate::pb::{
    Application, GetApplicationRequest, ListMattersRequest, ListMattersResponse, Matter,
    MatterProof, ProofMode, SubmitApplicationRequest, SubmitApplicationResponse,
    WatchApplicationRequest,
};
use crate::security::{caller, denied, Caller, ForwardedBy, Role};

pub struct ApplicationApi {
    gateway: Arc<Gateway>,
    metrics: Metrics,
    /// Cluster mode: submissions reserve their request in etcd first; None:
    /// one node, always free to decide.
    cluster: Option<super::cluster_hook::ClusterSubmit>,
}

impl ApplicationApi {
    pub fn new(gateway: Arc<Gateway>, metrics: Metrics) -> Self {
        Self {
            gateway,
            metrics,
            cluster: None,
        }
    }

    /// Cluster mode: submissions go through `cluster` (reserved in etcd, so
    /// a retry on any node finds them; no live session, nothing decided).
    pub(super) fn with_cluster(
        mut self,
        cluster: Option<super::cluster_hook::ClusterSubmit>,
    ) -> Self {
        self.cluster = cluster;
        self
    }
}

impl ApplicationApi {
    /// Cluster mode: the node that owns `id` when it is another one, and
    /// the call did not come forwarded already (forwarded calls are
    /// answered where they land, so no call goes round).
    fn owner_elsewhere(
        &self,
        id: &str,
        forwarded: bool,
    ) -> Option<(&super::cluster_hook::ClusterSubmit, String)> {
        let cluster = self.cluster.as_ref()?;
        if forwarded {
            return None;
        }
        cluster.owner_elsewhere(id).map(|owner| (cluster, owner))
    }

    /// Cluster mode: a peer forwarded a read of another node's application
    /// here (it could not reach the owner): answered from this node's
    /// mirror of the owner's log.
    fn mirror_asked(
        &self,
        id: &str,
        forwarded: bool,
    ) -> Option<(&super::cluster_hook::ClusterSubmit, String)> {
        let cluster = self.cluster.as_ref()?;
        if !forwarded {
            return None;
        }
        cluster.owner_elsewhere(id).map(|owner| (cluster, owner))
    }
}

/// The owner of `id` answered a forwarded read with `status`: when it is
/// down (UNAVAILABLE), a mirror of its log answers, marked, with the
/// owner's rule of who may read; otherwise, or when no mirror holds it, the
/// owner's status.
async fn owner_down(
    cluster: &super::cluster_hook::ClusterSubmit,
    owner: &str,
    id: &str,
    caller: &Caller,
    status: Status,
) -> Result<Application, Status> {
    if status.code() != tonic::Code::Unavailable {
        return Err(status);
    }
    let Some(mirrored) = cluster
        .read_from_mirror(owner, id, &caller.identity)
        .await?
    else {
        return Err(status);
    };
    may_read(caller, &mirrored)?;
    Ok(mirrored)
}

/// A hall may read only the applications it submitted; admins read all.
fn may_read(caller: &Caller, application: &Application) -> Result<(), Status> {
    if caller.role.is_admin() || application.caller == caller.identity {
        Ok(())
    } else {
        Err(denied(
            caller,
            format!(
                "read application {}, submitted by another hall",
                application.application_id
            ),
        ))
    }
}

fn application_id_of(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 128 {
        return Err(invalid_field(
            "application_id",
            "is required (at most 128 bytes)",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl ApplicationService for ApplicationApi {
    async fn submit_application(
        &self,
        request: Request<SubmitApplicationRequest>,
    ) -> Result<Response<SubmitApplicationResponse>, Status> {
        let caller = caller(&request)?;
        let budget = super::cluster_hook::wait_budget(
            request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok()),
        );
        let request = request.into_inner();
        let Role::ServiceHall { hall_id } = &caller.role else {
            return Err(denied(&caller, "submit applications (service halls only)"));
        };
        if let Some(officer) = &request.officer {
            if &officer.hall_id != hall_id {
                return Err(denied(
                    &caller,
                    format!(
                        "submit for hall `{}` (its certificate is for `{hall_id}`)",
                        officer.hall_id
                    ),
                ));
            }
        }
        let started = std::time::Instant::now();
        let (application, replayed) = match &self.cluster {
            Some(cluster) => cluster.submit(&caller.identity, request, budget).await?,
            None => self.gateway.submit(&caller.identity, request).await?,
        };
        if !replayed {
            self.metrics
                .application(application.status().as_str_name(), started.elapsed());
        }
        Ok(Response::new(SubmitApplicationResponse {
            application: Some(application),
            replayed,
        }))
    }

    async fn get_application(
        &self,
        request: Request<GetApplicationRequest>,
    ) -> Result<Response<Application>, Status> {
        let caller = caller(&request)?;
        let forwarded = request.extensions().get::<ForwardedBy>().is_some();
        let id = request.into_inner().application_id;
        application_id_of(&id)?;
        if let Some((cluster, owner)) = self.mirror_asked(&id, forwarded) {
            // A peer could not reach the owner: this node's mirror answers,
            // with the owner's rule of who may read it.
            let application = cluster.mirrored_here(&owner, &id)?;
            may_read(&caller, &application)?;
            return Ok(Response::new(application));
        }
        if let Some((cluster, owner)) = self.owner_elsewhere(&id, forwarded) {
            // The owner checks who may read it, as for its own callers.
            let what = format!("application {id}");
            let application = match cluster
                .peers()
                .get_application(&owner, &what, &id, &caller.identity)
                .await
            {
                Ok(application) => application,
                // The owner is down: a mirror of its log answers, marked.
                Err(down) => owner_down(cluster, &owner, &id, &caller, down).await?,
            };
            return Ok(Response::new(application));
        }
        let application = self.gateway.application(&id)?;
        may_read(&caller, &application)?;
        // Read once the mirrors required hold it, as it is answered.
        self.gateway.replicated(&application).await?;
        Ok(Response::new(application))
    }

    type WatchApplicationStream = Pin<Box<dyn Stream<Item = Result<Application, Status>> + Send>>;

    async fn watch_application(
        &self,
        request: Request<WatchApplicationRequest>,
    ) -> Result<Response<Self::WatchApplicationStream>, Status> {
        let caller = caller(&request)?;
        let forwarded = request.extensions().get::<ForwardedBy>().is_some();
        let id = request.into_inner().application_id;
        application_id_of(&id)?;
        if let Some((cluster, owner)) = self.owner_elsewhere(&id, forwarded) {
            let stream = match cluster
                .peers()
                .watch_application(&owner, &id, &caller.identity)
                .await
            {
                Ok(stream) => stream,
                Err(down) => {
                    // The owner is down: its state as a mirror holds it,
                    // then the end of the stream (a clear status when it
                    // is not final: updates need the owner).
                    let mirrored = owner_down(cluster, &owner, &id, &caller, down).await?;
                    let ended = (!is_final(&mirrored)).then(|| {
                        Status::from(super::mirror_reads::MirrorReadError::WatchEnded {
                            application_id: id.clone(),
                            owner: owner.clone(),
                            node: mirrored
                                .served_from_mirror
                                .as_ref()
                                .map(|m| m.mirror_node_id.clone())
                                .unwrap_or_default(),
                            tree_size: mirrored
                                .served_from_mirror
                                .as_ref()
                                .map_or(0, |m| m.tree_size),
                        })
                    });
                    let items = std::iter::once(Ok(mirrored)).chain(ended.map(Err));
                    return Ok(Response::new(Box::pin(tokio_stream::iter(items))));
                }
            };
            let what = format!("application {id}");
            // The owner's updates as they come; a broken stream says who.
            return Ok(Response::new(Box::pin(stream.map(move |item| {
                item.map_err(|status| super::peers::Peers::owner_status(&owner, &what, status))
            }))));
        }
        let current = Arc::new(self.gateway.application(&id)?);
        may_read(&caller, &current)?;
        // Each state is sent once the mirrors required hold it.
        self.gateway.replicated(&current).await?;
        let (tx, rx) = mpsc::channel(4);
        if is_final(&current) {
            let _ = tx.send(Ok(current.as_ref().clone())).await;
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let gateway = Arc::clone(&self.gateway);
        let mut changes = self.gateway.watchers().subscribe(Arc::clone(&current));
        // The store may have moved on between the read and the subscription.
        let current = match self.gateway.application(&id) {
            Ok(latest) => Arc::new(latest),
            Err(GatewayError::UnknownApplication(_)) | Err(_) => current,
        };
        tokio::spawn(async move {
            let mut sent = None;
            let mut next = current;
            loop {
                if sent.is_none_or(|index| receipt_index(&next) > index) {
                    if let Err(e) = gateway.replicated(&next).await {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    sent = Some(receipt_index(&next));
                    if tx.send(Ok(next.as_ref().clone())).await.is_err() {
                        return; // the follower left
                    }
                }
                if is_final(&next) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
                next = Arc::clone(&changes.borrow_and_update());
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_matters(
        &self,
        _request: Request<ListMattersRequest>,
    ) -> Result<Response<ListMattersResponse>, Status> {
        let policy = self.gateway.policy();
        let matters = policy
            .matters
            .values()
            .map(|m| Matter {
                matter_id: m.id.clone(),
                name: m.name.clone(),
                proofs: m
                    .proofs
                    .iter()
                    .map(|r| {
                        let p = &r.proof;
                        MatterProof {
                            proof_id: p.id.clone(),
                            proof_name: p.name.clone(),
                            mode: p.mode.as_pb() as i32,
                            department_id: p.department.clone().unwrap_or_default(),
                            legal_basis: p.legal_basis.clone(),
                            required_when: r
                                .when
                                .as_ref()
                                .map(|c| c.source().to_owned())
                                .unwrap_or_default(),
                            commitment_text: p
                                .commitment
                                .as_ref()
                                .map(|c| c.text.clone())
                                .unwrap_or_default(),
                            commitment_version: p
                                .commitment
                                .as_ref()
                                .map(|c| c.version.clone())
                                .unwrap_or_default(),
                            fallback_mode: p
                                .fallback
                                .map(|f| f.as_pb())
                                .unwrap_or(ProofMode::Unspecified)
                                as i32,
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListMattersResponse {
            policy_version: policy.version.clone(),
            matters,
        }))
    }
}
