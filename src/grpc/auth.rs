//! The tower layer that authenticates every `one.loyalty.v1` call (metadata `one-tenant` and
//! `authorization: Bearer <key>`), checks that the caller's roles grant the permission the
//! method requires (one table, [`super::permissions`]; a method missing from it is refused), and
//! attaches the [`Caller`](crate::domain::access::Caller). Health, reflection and other services
//! pass through.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

use super::limits::CallLimits;
use crate::domain::access::{ActingFor, FRONT_OFFICE_ROLE, RolePermissions};
use crate::service::access::AccessService;

/// Calls under this path prefix need credentials.
const PROTECTED_PREFIX: &str = "/one.loyalty.v1.";

#[derive(Clone)]
pub struct AuthLayer {
    access: Arc<AccessService>,
    roles: Arc<RolePermissions>,
    limits: Arc<CallLimits>,
}

impl AuthLayer {
    pub fn new(
        access: Arc<AccessService>,
        roles: Arc<RolePermissions>,
        limits: Arc<CallLimits>,
    ) -> Self {
        Self {
            access,
            roles,
            limits,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            access: Arc::clone(&self.access),
            roles: Arc::clone(&self.roles),
            limits: Arc::clone(&self.limits),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    access: Arc<AccessService>,
    roles: Arc<RolePermissions>,
    limits: Arc<CallLimits>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service is the one that must be called; keep a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let access = Arc::clone(&self.access);
        let roles = Arc::clone(&self.roles);
        let limits = Arc::clone(&self.limits);
        Box::pin(async move {
            if !request.uri().path().starts_with(PROTECTED_PREFIX) {
                return inner.call(request).await;
            }
            let headers = request.headers();
            let tenant = headers
                .get("one-tenant")
                .and_then(|v| v.to_str().ok())
                .map(str::trim);
            let bearer = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            let caller = match access.authenticate(tenant, bearer).await {
                Ok(caller) => caller,
                Err(err) => return Ok(Status::from(err).into_http()),
            };
            if let Err(status) = limits.admit(&caller) {
                return Ok(status.into_http());
            }
            // Held until the call has been answered.
            let _in_flight = match limits.enter(&caller) {
                Ok(permit) => permit,
                Err(status) => return Ok(status.into_http()),
            };
            let path = request.uri().path();
            let Some(permission) = super::permissions::required(path) else {
                return Ok(Status::permission_denied(format!(
                    "{path} is not in the permission table"
                ))
                .into_http());
            };
            if !roles.allows(&caller.roles, permission) {
                return Ok(Status::permission_denied(format!(
                    "the key's roles do not grant {}",
                    permission.as_str()
                ))
                .into_http());
            }
            let mut caller = caller;
            match acting_for(request.headers(), &caller.roles) {
                Ok(scope) => caller.acting_for = scope,
                Err(why) => return Ok(Status::permission_denied(why).into_http()),
            }
            request.extensions_mut().insert(caller);
            inner.call(request).await
        })
    }
}

/// The client and user a call acts for (`one-client-id`, `one-user-id`). A front-office key
/// must name both: the front office always acts for one client's user.
fn acting_for(headers: &http::HeaderMap, roles: &[String]) -> Result<Option<ActingFor>, String> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    match (value("one-client-id"), value("one-user-id")) {
        (Some(client_id), Some(user_id)) => Ok(Some(ActingFor { client_id, user_id })),
        (None, None) if !roles.iter().all(|r| r == FRONT_OFFICE_ROLE) => Ok(None),
        _ => Err(
            "a front-office call names the client and the user it acts for \
                  (metadata one-client-id and one-user-id)"
                .into(),
        ),
    }
}

/// The token of an `authorization` value "Bearer <token>" (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_tokens_are_read_whatever_the_scheme_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
