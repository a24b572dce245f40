//! Where the server meets cluster mode: joining the node directory with
//! this node's record, handing its progress (tree size, policy version) to
//! the session, and turning the session's liveness into health status for
//! ApplicationService; and submissions across nodes ([`ClusterSubmit`]):
//! reserve in etcd, decide, make durable, mark decided, answer — with the
//! reservation notes of this node settled at start and in the background
//! ([`settle_notes`]). Everything else of cluster mode lives in
//! [`crate::cluster`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tonic::Status;
use tracing::{info, warn};

use super::health::NodeHealth;
use super::mirror_reads::{MirrorReadError, MirrorReads};
use super::peers::Peers;
use super::{Logs, ServeError};
use crate::audit::AuditLog;
use crate::cluster::{
    ClusterError, ClusterOptions, NodeRecord, Progress, ProgressFn, Reservations, Reserved, Session,
};
use crate::gateway::Gateway;
use crate::pb::{
    Application, CompleteVerificationRequest, CompleteVerificationResponse,
    SubmitApplicationRequest,
};
use crate::security::tls::NodeTls;

/// A node in the cluster: its session, and the task that mirrors the
/// session's liveness into health.
pub(super) struct Joined {
    session: Session,
    submit: ClusterSubmit,
    health: Option<JoinHandle<()>>,
    settler: JoinHandle<()>,
}

/// Registers this node (refused if a live node holds its id).
pub(super) async fn join(
    options: &ClusterOptions,
    node_id: &str,
    endpoint: &str,
    gateway: &Arc<Gateway>,
    log: &AuditLog,
    tls: Option<NodeTls>,
    identity: &str,
) -> Result<Joined, ServeError> {
    let node_id = node_id.to_owned();
    let progress: ProgressFn = {
        let gateway = Arc::clone(gateway);
        Arc::new(move || Progress {
            // A store read that fails leaves the size at 0 for this round.
            tree_size: gateway.audit().store().tree_size().unwrap_or(0),
            policy_version: gateway.policy().version.clone(),
            now_unix_ms: u64::try_from(gateway.now_unix_ms()).unwrap_or(0),
        })
    };
    let record = NodeRecord {
        origin: crate::security::log_origin(&node_id),
        node_id,
        address: endpoint.to_owned(),
        vkey: log.verifier_key().to_owned(),
        policy_version: String::new(),
        tree_size: 0,
        updated_unix_ms: 0,
        software: env!("CARGO_PKG_VERSION").to_owned(),
        digest_key: gateway.digest_key_id(),
    };
    // One pseudonym key for all nodes: agreed in etcd before joining
    // (`cluster_shared::agree_on_pseudonym_key`).
    let session = Session::join(options.clone(), record, progress).await?;
    let reservations = session.reservations(
        &node_id_of(gateway),
        options.idempotency_window,
        gateway.digest_key_id(),
    );
    let submit = ClusterSubmit {
        peers: Peers::new(tls, identity.to_owned(), reservations.clone()),
        reservations,
        gateway: Arc::clone(gateway),
        deciding: Arc::new(Mutex::new(HashSet::new())),
        mirrors: None,
    };
    // Orphans of an earlier run are settled (superseded, or confirmed)
    // before this node answers anything, as far as etcd lets it now; what
    // is left is retried in the background.
    let left = settle_notes(&submit).await;
    if left > 0 {
        warn!(
            left,
            "reservations of an earlier run not settled yet; retrying in the background"
        );
    }
    let settler = tokio::spawn({
        let submit = submit.clone();
        async move {
            let mut every = tokio::time::interval(SETTLE_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                settle_notes(&submit).await;
            }
        }
    });
    Ok(Joined {
        session,
        submit,
        health: None,
        settler,
    })
}

fn node_id_of(gateway: &Gateway) -> String {
    gateway.node_id().to_owned()
}

/// How often reservations left unsettled (etcd unreachable when a decision
/// was to be marked, an orphan whose successor is still being decided) are
/// tried again.
const SETTLE_EVERY: Duration = Duration::from_secs(5);

/// How long a submission waits, at most, for another attempt of the same
/// request (on this node or another) to be decided, when the caller set no
/// deadline; with a deadline, 4/5 of it.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// While waiting, how often the owner's liveness is asked again.
const RECHECK_OWNER_EVERY: Duration = Duration::from_secs(1);

/// The time a submission may spend waiting for another attempt of the same
/// request, from the caller's `grpc-timeout` header (gRPC's own format: an
/// integer and one of H M S m u n).
pub(super) fn wait_budget(grpc_timeout: Option<&str>) -> Duration {
    let Some(text) = grpc_timeout.map(str::trim).filter(|t| t.len() >= 2) else {
        return DEFAULT_WAIT;
    };
    let (number, unit) = text.split_at(text.len() - 1);
    let Ok(number) = number.parse::<u64>() else {
        return DEFAULT_WAIT;
    };
    let deadline = match unit {
        "H" => Duration::from_secs(number.saturating_mul(3600)),
        "M" => Duration::from_secs(number.saturating_mul(60)),
        "S" => Duration::from_secs(number),
        "m" => Duration::from_millis(number),
        "u" => Duration::from_micros(number),
        "n" => Duration::from_nanos(number),
        _ => return DEFAULT_WAIT,
    };
    (deadline * 4 / 5).min(super::REQUEST_TIMEOUT * 4 / 5)
}

/// Submissions in cluster mode (issue 10, item 4).
#[derive(Clone)]
pub(super) struct ClusterSubmit {
    reservations: Reservations,
    peers: Peers,
    gateway: Arc<Gateway>,
    /// Requests this process holds the reservation of and is deciding or
    /// marking now; a reservation of this node's session not in here is
    /// left over from a failed attempt and may be taken over by this node.
    deciding: Arc<Mutex<HashSet<(String, String)>>>,
    /// This node's mirrors of other nodes' logs: reads of a down node's
    /// applications ([`super::mirror_reads`]). None until the node serves.
    mirrors: Option<MirrorReads>,
}

/// Leaves [`ClusterSubmit::deciding`] however the attempt ends.
struct Deciding {
    set: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for Deciding {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterSubmit {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.gateway.now_unix_ms()).unwrap_or(0)
    }

    /// Reserve → decide → durable → mark decided → answer; or the decision
    /// an earlier attempt of the same request got, on any node (`true`:
    /// replayed). At most one acknowledged decision per request.
    pub(super) async fn submit(
        &self,
        caller: &str,
        request: SubmitApplicationRequest,
        budget: Duration,
    ) -> Result<(Application, bool), Status> {
        let digest = self.gateway.admit(&request)?;
        let request_id = request.request_id.clone();
        let started = Instant::now();
        let mut reserved = self
            .reservations
            .reserve(caller, &request_id, &digest, self.now_ms())
            .await?;
        loop {
            let (held, revision) = match reserved {
                Reserved::Ours { revision } => {
                    return self.decide(caller, request, &digest, revision).await;
                }
                Reserved::Held {
                    reservation,
                    revision,
                } => (reservation, revision),
            };
            if !self.reservations.same_request(&held, &digest)? {
                return Err(crate::gateway::GatewayError::RequestIdReused(request_id).into());
            }
            if let Some(application_id) = held.decided() {
                let application = self
                    .decided_application(caller, &held.owner, &request_id, application_id)
                    .await?;
                return Ok((application, true));
            }
            let ours_now = self.reservations.is_ours(&held)
                && !lock(&self.deciding).contains(&(caller.to_owned(), request_id.clone()));
            let owner_live = !ours_now && self.reservations.owner_live(&held).await?;
            if !owner_live {
                // Its owner's session is gone (or it is a failed attempt of
                // this node's): take it over, unless someone else just did.
                reserved = match self
                    .reservations
                    .take_over(caller, &request_id, revision, &digest, self.now_ms())
                    .await?
                {
                    Some(revision) => {
                        info!(request_id = %request_id, previous_owner = %held.owner, "request taken over");
                        Reserved::Ours { revision }
                    }
                    None => self.reread(caller, &request_id, &digest).await?,
                };
                continue;
            }
            let waited = started.elapsed();
            if waited >= budget {
                return Err(ClusterError::StillDeciding {
                    owner: held.owner,
                    request_id,
                }
                .into());
            }
            self.reservations
                .wait_change(
                    caller,
                    &request_id,
                    revision,
                    (budget - waited).min(RECHECK_OWNER_EVERY),
                )
                .await?;
            reserved = self.reread(caller, &request_id, &digest).await?;
        }
    }

    /// The reservation as etcd holds it now; absent (expired meanwhile): a
    /// fresh reservation.
    async fn reread(
        &self,
        caller: &str,
        request_id: &str,
        digest: &[u8; 32],
    ) -> Result<Reserved, ClusterError> {
        match self.reservations.get(caller, request_id).await? {
            Some((reservation, revision)) => Ok(Reserved::Held {
                reservation,
                revision,
            }),
            None => {
                self.reservations
                    .reserve(caller, request_id, digest, self.now_ms())
                    .await
            }
        }
    }

    /// This node holds the reservation at `revision`: decide (or find the
    /// decision this node logged for it before), then mark it decided.
    async fn decide(
        &self,
        caller: &str,
        request: SubmitApplicationRequest,
        digest: &[u8; 32],
        revision: i64,
    ) -> Result<(Application, bool), Status> {
        let request_id = request.request_id.clone();
        let key = (caller.to_owned(), request_id.clone());
        lock(&self.deciding).insert(key.clone());
        let _deciding = Deciding {
            set: Arc::clone(&self.deciding),
            key,
        };
        let store = self.gateway.audit().store();
        // Written before the decision, made durable by its batch: if this
        // node dies before marking, it settles the request when it restarts.
        store
            .note_reservation(caller, &request_id)
            .map_err(crate::gateway::GatewayError::from)?;
        let (application, replayed) = match self.gateway.submit(caller, request).await {
            Ok(decided) => decided,
            Err(e @ crate::gateway::GatewayError::NotReplicated { .. }) => {
                // Decided and logged here, not yet on the mirrors required:
                // the reservation stays this node's, and settling marks it
                // decided once they hold the entry (a retry then gets it).
                warn!(error = %e, %request_id, "decision not yet replicated; marked decided in the background once it is");
                return Err(e.into());
            }
            Err(e) => {
                // Not decided here: give the reservation up so a retry on
                // any node may decide it. When the log failed, its entry may
                // still have reached the disk: the note stays, and settling
                // supersedes that entry if the request is decided elsewhere.
                let released = self
                    .reservations
                    .release(caller, &request_id, revision)
                    .await
                    .unwrap_or(false);
                let uncertain = matches!(
                    e,
                    crate::gateway::GatewayError::Audit(_) | crate::gateway::GatewayError::Task(_)
                );
                if released && !uncertain {
                    let _ = store.forget_reservation(caller, &request_id);
                }
                return Err(e.into());
            }
        };
        let marked = self
            .reservations
            .mark_decided(
                caller,
                &request_id,
                revision,
                digest,
                &application.application_id,
                self.now_ms(),
            )
            .await;
        match marked {
            Ok(true) => {
                let _ = store.forget_reservation(caller, &request_id);
                Ok((application, replayed))
            }
            // Taken over meanwhile: this decision is an orphan; the note
            // stays, and settling marks it superseded.
            Ok(false) => Err(ClusterError::TakenOver { request_id }.into()),
            Err(e) => {
                warn!(error = %e, %request_id, "decision logged but not confirmed in etcd; settled in the background");
                Err(ClusterError::Unconfirmed { request_id }.into())
            }
        }
    }

    /// The node that owns `application_id` when it is not this one
    /// (application ids are `<node-id>.<24 hex digits>`); None: this node's,
    /// or not an application id at all (answered here: not found).
    pub(super) fn owner_elsewhere(&self, application_id: &str) -> Option<String> {
        let (node, rest) = application_id.split_once('.')?;
        let shaped = rest.len() == 24 && rest.bytes().all(|b| b.is_ascii_hexdigit());
        (shaped && !node.is_empty() && node != self.reservations.node_id()).then(|| node.to_owned())
    }

    pub(super) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// A completion for a ticket this node does not hold: asked of the
    /// other nodes in turn (the one that asked the department for the
    /// ticket holds it); the first that knows the ticket answers. None
    /// knows it: NOT_FOUND; a node that cannot be reached while none of
    /// the others knows it: UNAVAILABLE naming it (the ticket may be its).
    pub(super) async fn complete_elsewhere(
        &self,
        request: CompleteVerificationRequest,
        caller: &str,
    ) -> Result<CompleteVerificationResponse, Status> {
        let unknown = crate::gateway::GatewayError::UnknownTicket {
            department: request.department_id.clone(),
            ticket: request.ticket.clone(),
        };
        let what = format!(
            "ticket `{}` of department `{}`, if not this node's,",
            request.ticket, request.department_id
        );
        let mut unreachable = None;
        for node in self.reservations.other_nodes().await? {
            match self
                .peers
                .complete_verification(&node, &what, request.clone(), caller)
                .await
            {
                Ok(done) => return Ok(done),
                Err(status) if status.code() == tonic::Code::NotFound => continue,
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    unreachable = Some(status)
                }
                Err(status) => return Err(status),
            }
        }
        Err(unreachable.unwrap_or_else(|| unknown.into()))
    }

    /// The application a reservation names: from this node's store, or from
    /// its owner node.
    async fn decided_application(
        &self,
        caller: &str,
        owner: &str,
        request_id: &str,
        application_id: &str,
    ) -> Result<Application, Status> {
        if owner == self.reservations.node_id() {
            return Ok(self.gateway.application(application_id)?);
        }
        let what = format!("request `{request_id}` (application {application_id})");
        match self
            .peers
            .get_application(owner, &what, application_id, caller)
            .await
        {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                // The owner is down: its decision as a mirror holds it.
                match self.read_from_mirror(owner, application_id, caller).await? {
                    Some(application) if application.caller == caller => Ok(application),
                    _ => Err(status),
                }
            }
            answered => answered,
        }
    }

    /// `application_id` of `owner` (down, or unreachable from here) from a
    /// verified mirror of its log, marked as served from a mirror: this
    /// node's own mirror first, then each other live node (by node id),
    /// which answers a forwarded read of an application it does not own
    /// from its mirror. Ok(None): no mirror holds it now. A refusal by a
    /// mirror (another hall's application) is returned as it is. Who may
    /// read what is checked by the caller for this node's mirror.
    pub(super) async fn read_from_mirror(
        &self,
        owner: &str,
        application_id: &str,
        caller: &str,
    ) -> Result<Option<Application>, Status> {
        let Some(mirrors) = &self.mirrors else {
            return Ok(None);
        };
        match mirrors.local(owner, application_id) {
            Ok(application) => return Ok(Some(application)),
            Err(e @ MirrorReadError::Store { .. }) => {
                warn!(error = %e, "mirror unreadable; asking the other nodes' mirrors")
            }
            Err(e) => tracing::debug!(reason = %e, "not answered by this node's mirror"),
        }
        let mut others = match self.reservations.other_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::debug!(error = %e, "node directory unreadable; no other mirror asked");
                return Ok(None);
            }
        };
        others.retain(|node| node != owner);
        others.sort();
        let what = format!("application {application_id} (from its mirror)");
        for node in others {
            match self
                .peers
                .get_application(&node, &what, application_id, caller)
                .await
            {
                // Only a marked answer: a node that answers unmarked would
                // claim to own another node's application.
                Ok(application)
                    if application.served_from_mirror.is_some()
                        && application.application_id == application_id =>
                {
                    return Ok(Some(application))
                }
                Ok(_) => continue,
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::NotFound | tonic::Code::Unavailable | tonic::Code::Internal
                    ) =>
                {
                    continue
                }
                Err(status) => return Err(status),
            }
        }
        Ok(None)
    }

    /// A peer's forwarded read of `owner`'s application, answered from
    /// this node's mirror of the owner's log (or why not). Who may read it
    /// is the caller's check.
    pub(super) fn mirrored_here(
        &self,
        owner: &str,
        application_id: &str,
    ) -> Result<Application, MirrorReadError> {
        match &self.mirrors {
            Some(mirrors) => mirrors.local(owner, application_id),
            None => Err(MirrorReadError::NotMirroredHere {
                application_id: application_id.to_owned(),
                node: self.reservations.node_id().to_owned(),
                origin: crate::security::log_origin(owner),
            }),
        }
    }
}

/// Settles the reservations this node noted and has not settled: a
/// decision marked in etcd is forgotten; one whose reservation this node (or
/// a dead owner) still holds undecided is marked decided now; one the
/// cluster decided otherwise is an orphan and is logged superseded. Returns
/// how many are left for a later round.
pub(super) async fn settle_notes(submit: &ClusterSubmit) -> usize {
    let store = submit.gateway.audit().store().clone();
    let notes = match store.noted_reservations() {
        Ok(notes) => notes,
        Err(e) => {
            warn!(error = %e, "reservation notes cannot be read");
            return 0;
        }
    };
    let mut left = 0;
    for (caller, request_id) in notes {
        if lock(&submit.deciding).contains(&(caller.clone(), request_id.clone())) {
            continue;
        }
        match settle(submit, &caller, &request_id).await {
            Ok(true) => {
                let _ = store.forget_reservation(&caller, &request_id);
            }
            Ok(false) => left += 1,
            Err(e) => {
                tracing::debug!(error = %e, %request_id, "reservation not settled yet");
                left += 1;
            }
        }
    }
    left
}

/// One note; true: settled.
async fn settle(submit: &ClusterSubmit, caller: &str, request_id: &str) -> Result<bool, String> {
    let store = submit.gateway.audit().store();
    let reservations = &submit.reservations;
    let Some((digest, application_id)) = store
        .request(caller, request_id)
        .map_err(|e| e.to_string())?
    else {
        // Nothing logged for it (or already superseded): a reservation this
        // node still holds for it is given up, so a retry decides it.
        if let Some((held, revision)) = reservations
            .get(caller, request_id)
            .await
            .map_err(|e| e.to_string())?
        {
            if held.decided().is_none()
                && held.owner == reservations.node_id()
                && !reservations
                    .release(caller, request_id, revision)
                    .await
                    .map_err(|e| e.to_string())?
            {
                return Ok(false);
            }
        }
        return Ok(true);
    };
    // This node's decision is made the cluster's only once it is on the
    // mirrors required (a mark is what lets another node answer it); until
    // then it is tried again next round. An orphan is superseded at once.
    let replicated = || {
        submit
            .gateway
            .is_replicated(&application_id)
            .map_err(|e| e.to_string())
    };
    let now = submit.now_ms();
    let held = reservations
        .get(caller, request_id)
        .await
        .map_err(|e| e.to_string())?;
    let Some((held, revision)) = held else {
        if !replicated()? {
            return Ok(false);
        }
        // Expired: this decision is the only one; claim it as decided.
        return reservations
            .claim_decided(caller, request_id, &digest, &application_id, now)
            .await
            .map_err(|e| e.to_string());
    };
    if let Some(decided) = held.decided() {
        if decided != application_id {
            submit
                .gateway
                .supersede(&application_id, caller, request_id, decided)
                .await
                .map_err(|e| e.to_string())?;
        }
        return Ok(true);
    }
    if !replicated()? {
        return Ok(false);
    }
    let mut revision = revision;
    if !reservations.is_ours(&held) {
        if reservations
            .owner_live(&held)
            .await
            .map_err(|e| e.to_string())?
        {
            // Another live node is deciding it: settle once it has.
            return Ok(false);
        }
        // Its owner (this node before a restart, or another) is gone and
        // nothing was marked: this node's logged decision becomes the one.
        match reservations
            .take_over(caller, request_id, revision, &digest, now)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(taken) => revision = taken,
            None => return Ok(false),
        }
    }
    reservations
        .mark_decided(caller, request_id, revision, &digest, &application_id, now)
        .await
        .map_err(|e| e.to_string())
}

impl Joined {
    pub(super) fn submit(&self) -> ClusterSubmit {
        self.submit.clone()
    }

    /// Reads of a down node's applications are answered from the mirrors
    /// in `logs` (this node's), and this node answers its peers' from them.
    pub(super) fn serve_mirrors(mut self, logs: Logs) -> Self {
        self.submit.mirrors = Some(MirrorReads::new(
            self.submit.reservations.node_id().to_owned(),
            logs,
        ));
        self
    }

    /// True while the node's etcd session is live.
    pub(super) fn live(&self) -> tokio::sync::watch::Receiver<bool> {
        self.session.subscribe()
    }

    /// From now on health says NOT_SERVING for ApplicationService while the
    /// session is not live, SERVING when it is again.
    pub(super) fn report_health(mut self, health: NodeHealth) -> Self {
        let mut live = self.session.subscribe();
        self.health = Some(tokio::spawn(async move {
            loop {
                let now = *live.borrow_and_update();
                health.set(|r| r.cluster_not_live = !now).await;
                if live.changed().await.is_err() {
                    return;
                }
            }
        }));
        self
    }

    /// Leaves the cluster: no more decisions, the record removed now.
    pub(super) async fn leave(mut self) {
        if let Some(task) = self.health.take() {
            task.abort();
        }
        self.settler.abort();
        self.session.leave().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_follows_the_callers_deadline_within_bounds() {
        assert_eq!(wait_budget(None), DEFAULT_WAIT);
        assert_eq!(wait_budget(Some("5S")), Duration::from_secs(4));
        assert_eq!(wait_budget(Some("2500m")), Duration::from_secs(2));
        // Never past the server's own timeout.
        assert_eq!(
            wait_budget(Some("1H")),
            super::super::REQUEST_TIMEOUT * 4 / 5
        );
        for odd in ["", "S", "5x", "-1S", "abcS"] {
            assert_eq!(wait_budget(Some(odd)), DEFAULT_WAIT, "{odd}");
        }
    }
}
