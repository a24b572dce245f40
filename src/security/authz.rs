//! The gate every call passes, as a tonic interceptor in front of each
//! service: authenticate (client certificate; in explicit plaintext dev mode
//! a header), map the identity to a role, check the role may use the service,
//! and hold the caller to its rate. The handlers then check what depends on
//! the request (a hall reads only its own applications, a department
//! registers only itself).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::warn;

use super::identity::{identity_of, Caller, Role, RoleMap};
use crate::clock::Monotonic;
use crate::metrics::Metrics;

/// Header naming the caller in `--insecure-plaintext` mode only.
pub const PLAINTEXT_IDENTITY_HEADER: &str = "x-proofgate-identity";

/// Header by which a gateway node forwarding a call (cluster mode: to the
/// node that owns the application) names the caller it acts for. Honoured
/// only from a caller whose role is `gateway`; from anyone else the call is
/// refused.
pub const ON_BEHALF_OF_HEADER: &str = "x-proofgate-on-behalf-of";

/// Set on a request a gateway node forwarded: which node forwarded it. A
/// forwarded call is answered where it lands, never forwarded again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedBy(pub String);

/// Calls per second per caller, by role and by identity.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub per_role: HashMap<String, u32>,
    pub per_identity: HashMap<String, u32>,
}

impl Default for RateLimits {
    fn default() -> Self {
        let per_role = [
            ("hall", 5000),
            ("department", 5000),
            ("auditor", 200),
            ("citizen-portal", 50),
            ("admin", 100),
            ("gateway", 5000),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self {
            per_role,
            per_identity: HashMap::new(),
        }
    }
}

impl RateLimits {
    fn rate_for(&self, caller: &Caller) -> u32 {
        self.per_identity
            .get(&caller.identity)
            .or_else(|| self.per_role.get(caller.role.kind()))
            .copied()
            .unwrap_or(100)
    }
}

type CallerLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct GuardState<C: Clock> {
    tls: bool,
    roles: RoleMap,
    limits: RateLimits,
    /// Every caller's bucket runs on this clock: [`Monotonic`] in service,
    /// governor's `FakeRelativeClock` in tests.
    clock: C,
    limiters: Mutex<HashMap<String, Arc<CallerLimiter<C>>>>,
}

/// Shared by every service's interceptor.
pub struct Guard<C: Clock = Monotonic> {
    state: Arc<GuardState<C>>,
    /// Where each gate's verdicts are counted (handed in by the server).
    metrics: Metrics,
    /// The node's revocation lists, checked per call (so a revocation
    /// reaches connections opened before it); None: none configured here.
    revocations: Option<super::tls::NodeTls>,
}

impl<C: Clock> Clone for Guard<C> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            metrics: self.metrics.clone(),
            revocations: self.revocations.clone(),
        }
    }
}

impl Guard {
    pub fn new(tls: bool, roles: RoleMap, limits: RateLimits) -> Self {
        Self::with_clock(tls, roles, limits, Monotonic::default())
    }
}

impl<C: Clock + Clone> Guard<C> {
    /// A guard whose per-caller rate limits run on `clock`.
    pub fn with_clock(tls: bool, roles: RoleMap, limits: RateLimits, clock: C) -> Self {
        Self {
            state: Arc::new(GuardState {
                tls,
                roles,
                limits,
                clock,
                limiters: Mutex::new(HashMap::new()),
            }),
            metrics: Metrics::default(),
            revocations: None,
        }
    }

    /// Refuses, per call, callers whose certificate `tls` says is revoked
    /// (or every caller, while its revocation lists are expired).
    pub fn with_revocations(mut self, tls: super::tls::NodeTls) -> Self {
        self.revocations = Some(tls);
        self
    }

    /// Counts the gates' verdicts in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The interceptor of one service, admitting the given role kinds.
    pub fn for_service(
        &self,
        service: &'static str,
        allowed: &'static [&'static str],
    ) -> ServiceGate<C> {
        ServiceGate {
            guard: self.clone(),
            service,
            allowed,
        }
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let identity = if self.state.tls {
            let certs = request.peer_certs().unwrap_or_default();
            // Logged once per certificate and load by the TLS (an expiry
            // once per episode), not per call; the text names no file.
            if let Some(refusal) = self
                .revocations
                .as_ref()
                .and_then(|tls| tls.refusal(&certs))
            {
                return Err(Status::unauthenticated(format!(
                    "client certificate refused: {refusal}"
                )));
            }
            identity_of(&certs).ok_or_else(|| {
                Status::unauthenticated(
                    "a client certificate issued by the gateway's CA, naming a .proofgate identity, is required",
                )
            })?
        } else {
            request
                .metadata()
                .get(PLAINTEXT_IDENTITY_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| {
                    Status::unauthenticated(format!(
                        "plaintext mode: name yourself in the `{PLAINTEXT_IDENTITY_HEADER}` header"
                    ))
                })?
        };
        let role = self.state.roles.role_of(&identity).ok_or_else(|| {
            warn!(%identity, "refused: identity has no role");
            Status::permission_denied(format!("identity `{identity}` has no role at this gateway"))
        })?;
        Ok(Caller { identity, role })
    }

    fn limit(&self, caller: &Caller) -> Result<(), Status> {
        let limiter = {
            let mut limiters = self
                .state
                .limiters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            Arc::clone(limiters.entry(caller.identity.clone()).or_insert_with(|| {
                let rate = self.state.limits.rate_for(caller).max(1);
                let per_second = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new((rate / 10).max(1)).unwrap_or(NonZeroU32::MIN);
                Arc::new(RateLimiter::direct_with_clock(
                    Quota::per_second(per_second).allow_burst(burst),
                    self.state.clock.clone(),
                ))
            }))
        };
        limiter.check().map_err(|not_until| {
            let wait: Duration = not_until.wait_time_from(self.state.clock.now());
            let millis = wait.as_millis().max(1);
            resource_exhausted(
                format!(
                    "rate limit of {} calls/s for `{}` reached; retry in {millis} ms",
                    self.state.limits.rate_for(caller),
                    caller.identity
                ),
                Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX)),
            )
        })
    }
}

/// One service's gate.
pub struct ServiceGate<C: Clock = Monotonic> {
    guard: Guard<C>,
    service: &'static str,
    allowed: &'static [&'static str],
}

impl<C: Clock> Clone for ServiceGate<C> {
    fn clone(&self) -> Self {
        Self {
            guard: self.guard.clone(),
            service: self.service,
            allowed: self.allowed,
        }
    }
}

impl<C: Clock + Clone> Interceptor for ServiceGate<C> {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let result = self.admit(&mut request);
        let verdict = match &result {
            Ok(()) => "admitted",
            Err(s) if s.code() == tonic::Code::Unauthenticated => "unauthenticated",
            Err(s) if s.code() == tonic::Code::ResourceExhausted => "limited",
            Err(_) => "denied",
        };
        self.guard.metrics.request(self.service, verdict);
        result.map(|()| request)
    }
}

impl<C: Clock + Clone> ServiceGate<C> {
    fn admit(&self, request: &mut Request<()>) -> Result<(), Status> {
        let caller = self.guard.authenticate(request)?;
        // The node's own rate holds for what it forwards.
        let limited = caller.clone();
        let on_behalf = request
            .metadata()
            .get(ON_BEHALF_OF_HEADER)
            .map(|v| v.to_str().map(str::to_owned));
        let caller = match on_behalf {
            None => caller,
            Some(_) if caller.role != Role::Gateway => {
                warn!(caller = %caller, "refused: only a gateway node may act on behalf of another caller");
                return Err(Status::permission_denied(format!(
                    "{caller} may not act on behalf of another caller (only gateway nodes forward calls)"
                )));
            }
            Some(Err(_)) => {
                return Err(Status::invalid_argument(format!(
                    "`{ON_BEHALF_OF_HEADER}` is not a readable identity"
                )))
            }
            Some(Ok(identity)) => {
                let role = self.guard.state.roles.role_of(&identity).ok_or_else(|| {
                    Status::permission_denied(format!(
                        "identity `{identity}` has no role at this gateway"
                    ))
                })?;
                request
                    .extensions_mut()
                    .insert(ForwardedBy(caller.identity.clone()));
                Caller { identity, role }
            }
        };
        if !self.allowed.contains(&caller.role.kind()) {
            warn!(caller = %caller, service = self.service, "refused: role may not use this service");
            return Err(Status::permission_denied(format!(
                "{caller} may not use {}",
                self.service
            )));
        }
        self.guard.limit(&limited)?;
        request.extensions_mut().insert(caller);
        Ok(())
    }
}

/// The caller the gate put on a request; absent only if a service was
/// mounted without its gate, which is refused rather than trusted.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("caller not authenticated"))
}

/// Refusal for a caller acting outside its own scope.
pub fn denied(caller: &Caller, what: impl std::fmt::Display) -> Status {
    warn!(caller = %caller, %what, "refused");
    Status::permission_denied(format!("{caller} may not {what}"))
}

impl Role {
    pub fn is_admin(&self) -> bool {
        matches!(self, Role::Admin)
    }
}

/// Client side of plaintext dev mode: names the caller in a header (ignored
/// by a TLS gateway, which reads the certificate).
#[derive(Clone)]
pub struct IdentityHeader(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl IdentityHeader {
    pub fn new(identity: &str) -> Self {
        Self(
            identity
                .parse()
                .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("invalid")),
        )
    }
}

impl Interceptor for IdentityHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(PLAINTEXT_IDENTITY_HEADER, self.0.clone());
        Ok(request)
    }
}

/// A channel to `uri`: mutual TLS as `tls`'s identity expecting the server
/// to be `server_identity`, or plaintext when `tls` is None.
pub async fn connect(
    uri: &str,
    tls: Option<&super::TlsFiles>,
    server_identity: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(uri.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.client_config(server_identity))?;
    }
    endpoint.connect().await
}

/// RESOURCE_EXHAUSTED with the wait as a `google.rpc.RetryInfo` detail and
/// as `retry-after-ms` metadata (for clients that read no details).
pub fn resource_exhausted(message: impl Into<String>, retry_after: Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut status = Status::with_error_details(
        tonic::Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    );
    if let Ok(value) = retry_after.as_millis().max(1).to_string().parse() {
        status.metadata_mut().insert("retry-after-ms", value);
    }
    status
}

#[cfg(test)]
mod tests {
    //! Per-caller limits on governor's fake clock: exact, whatever the
    //! machine's speed.

    use super::*;
    use governor::clock::FakeRelativeClock;

    const HALL: &str = "hall-wucheng.hall.proofgate";
    const OTHER_HALL: &str = "hall-jindong.hall.proofgate";

    fn gate(limits: RateLimits) -> (ServiceGate<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let guard = Guard::with_clock(false, RoleMap::default(), limits, clock.clone());
        (
            guard.for_service("proofgate.v1.ApplicationService", &["hall"]),
            clock,
        )
    }

    fn call(gate: &mut ServiceGate<FakeRelativeClock>, identity: &str) -> Result<Caller, Status> {
        let mut request = Request::new(());
        // An empty identity: no header at all.
        if let Some(value) = Some(identity)
            .filter(|i| !i.is_empty())
            .and_then(|i| i.parse().ok())
        {
            request
                .metadata_mut()
                .insert(PLAINTEXT_IDENTITY_HEADER, value);
        }
        gate.call(request)
            .map(|admitted| admitted.extensions().get::<Caller>().cloned().unwrap())
    }

    #[test]
    fn only_a_gateway_node_may_act_on_behalf_of_a_hall() {
        let (mut gate, _) = gate(RateLimits::default());
        let on_behalf = |identity: &str| {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert(PLAINTEXT_IDENTITY_HEADER, identity.parse().unwrap());
            request
                .metadata_mut()
                .insert(ON_BEHALF_OF_HEADER, HALL.parse().unwrap());
            request
        };
        // A node forwarding for the hall: the call is the hall's.
        let admitted = gate.call(on_behalf("gateway.proofgate")).unwrap();
        let caller = admitted.extensions().get::<Caller>().unwrap();
        assert_eq!(caller.identity, HALL);
        assert!(matches!(caller.role, Role::ServiceHall { .. }));
        assert_eq!(
            admitted.extensions().get::<ForwardedBy>(),
            Some(&ForwardedBy("gateway.proofgate".into()))
        );
        // Another hall naming the first: refused.
        let refused = gate.call(on_behalf(OTHER_HALL)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("only gateway nodes"),
            "{refused:?}"
        );
        // Without the header, a hall's own call has no ForwardedBy.
        let own = gate.call(on_behalf(HALL)).unwrap_err();
        assert_eq!(own.code(), tonic::Code::PermissionDenied);
        let plain = call(&mut gate, HALL).unwrap();
        assert_eq!(plain.identity, HALL);
    }

    fn retry_after_ms(status: &Status) -> u64 {
        status
            .metadata()
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    fn limits(identity: &str, rate: u32) -> RateLimits {
        let mut limits = RateLimits::default();
        limits.per_identity.insert(identity.into(), rate);
        limits
    }

    #[test]
    fn a_caller_within_its_rate_is_admitted_and_past_it_told_when_to_retry() {
        // 20 calls/s: a burst of 2, then one call every 50 ms.
        let (mut gate, clock) = gate(limits(HALL, 20));
        for _ in 0..2 {
            let caller = call(&mut gate, HALL).expect("within the burst");
            assert_eq!(caller.identity, HALL);
        }
        let refused = call(&mut gate, HALL).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(retry_after_ms(&refused), 50);
        assert!(refused.message().contains("20 calls/s"), "{refused:?}");
        clock.advance(Duration::from_millis(30));
        assert_eq!(retry_after_ms(&call(&mut gate, HALL).unwrap_err()), 20);
        clock.advance(Duration::from_millis(20));
        assert!(call(&mut gate, HALL).is_ok(), "admitted when the hint said");
        assert!(call(&mut gate, HALL).is_err());
        // Exactly the rate over a second of steady calls.
        let mut admitted = 0;
        for _ in 0..1000 {
            clock.advance(Duration::from_millis(1));
            admitted += u32::from(call(&mut gate, HALL).is_ok());
        }
        assert_eq!(admitted, 20);
    }

    #[test]
    fn one_callers_flood_does_not_limit_another() {
        let (mut gate, _clock) = gate(limits(HALL, 10));
        assert!(call(&mut gate, HALL).is_ok());
        for _ in 0..100 {
            assert_eq!(
                call(&mut gate, HALL).unwrap_err().code(),
                tonic::Code::ResourceExhausted
            );
        }
        // The other hall falls under the role's default: 5000/s, burst 500.
        for _ in 0..500 {
            assert!(call(&mut gate, OTHER_HALL).is_ok());
        }
        assert!(call(&mut gate, OTHER_HALL).is_err());
    }

    #[test]
    fn a_limit_per_identity_overrides_the_roles() {
        let mut limits = limits(HALL, 30);
        limits.per_role.insert("hall".into(), 10);
        let (mut gate, _clock) = gate(limits);
        for _ in 0..3 {
            assert!(call(&mut gate, HALL).is_ok());
        }
        assert!(call(&mut gate, HALL).is_err());
        assert!(call(&mut gate, OTHER_HALL).is_ok());
        assert!(
            call(&mut gate, OTHER_HALL).is_err(),
            "role rate 10/s: burst 1"
        );
    }

    #[test]
    fn refusals_before_the_limit_do_not_spend_it() {
        let (mut gate, _clock) = gate(limits(HALL, 10));
        let status = call(&mut gate, "").unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = call(&mut gate, "auditor.auditor.proofgate").unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(call(&mut gate, HALL).is_ok());
    }
}
