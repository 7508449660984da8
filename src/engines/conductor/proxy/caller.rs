//! Who a proxied request comes from, as far as recording it goes.
//!
//! Workers' SDKs send the engine's own credentials (`X-Authorization` with Conductor's token,
//! or an `Authorization` header), which the proxy passes through: the engine decides what it
//! takes, and taskpulse records only what the engine took. With `--auth-token`, a request must
//! also be authenticated before anything it says is recorded: by taskpulse's token
//! (`X-Taskpulse-Token: TOKEN`, or `Authorization: Bearer TOKEN`, taken off before the request
//! goes upstream). A 2xx from the engine proves nothing about credentials: open-source
//! Conductor checks none and accepts a request with `Cookie: a=b` like any other. Engine
//! credentials count only when the operator says the engine checks them
//! (`--conductor-proxy-trust-engine-auth`: Orkes Conductor, or a gateway in front): then a
//! request the engine accepted with credentials is recorded too. A request that proves nothing
//! is still forwarded as it is (the engine answers it), and nothing of it is recorded.
//!
//! Heartbeats answered without asking the engine (coalesced) are recorded only when they carry
//! the same credentials the engine last accepted for that task, compared as a keyed hash.

use std::hash::BuildHasher;

use axum::http::{header, HeaderMap};

use crate::http::seam::bearer_matches;
use crate::settings::Secret;

/// The header that carries taskpulse's token through the proxy.
pub const TOKEN_HEADER: &str = "x-taskpulse-token";

/// The engine's credential headers, whose values make a request's fingerprint.
const CREDENTIALS: [&str; 3] = ["authorization", "x-authorization", "cookie"];

/// A request's caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// It carried taskpulse's token.
    Taskpulse,
    /// It carried engine credentials (a keyed hash of them), or none (0).
    Engine(u64),
}

/// What proves a caller, from the settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof {
    /// `--auth-token` is set: something must prove the caller.
    pub token_set: bool,
    /// `--conductor-proxy-trust-engine-auth`: engine credentials the engine accepted do.
    pub engine_checks: bool,
}

impl Caller {
    /// Whether what the request says may be recorded, given whether the engine accepted it.
    pub fn may_record(self, engine_accepted: bool, proof: Proof) -> bool {
        match self {
            Caller::Taskpulse => true,
            Caller::Engine(fp) => {
                engine_accepted && (!proof.token_set || (proof.engine_checks && fp != 0))
            }
        }
    }

    /// The fingerprint the engine's acceptance vouches for (0 for taskpulse's token).
    pub fn fingerprint(self) -> u64 {
        match self {
            Caller::Taskpulse => 0,
            Caller::Engine(fp) => fp,
        }
    }
}

/// Recognises callers and takes taskpulse's token off requests before they go upstream.
pub struct Callers {
    token: Option<Secret>,
    engine_checks: bool,
    hasher: std::collections::hash_map::RandomState,
}

impl Callers {
    /// `engine_checks`: `--conductor-proxy-trust-engine-auth`.
    pub fn new(token: Option<Secret>, engine_checks: bool) -> Callers {
        Callers {
            token,
            engine_checks,
            hasher: Default::default(),
        }
    }

    pub fn proof(&self) -> Proof {
        Proof {
            token_set: self.token.is_some(),
            engine_checks: self.engine_checks,
        }
    }

    /// Who sent `headers`; taskpulse's token is removed from them.
    pub fn identify(&self, headers: &mut HeaderMap) -> Caller {
        let ours = match &self.token {
            None => false,
            Some(token) => {
                let by_header = headers.get(TOKEN_HEADER).is_some_and(|v| {
                    subtle::ConstantTimeEq::ct_eq(v.as_bytes(), token.0.as_bytes()).into()
                });
                let by_bearer = bearer_matches(headers, token);
                if by_bearer {
                    headers.remove(header::AUTHORIZATION);
                }
                by_header || by_bearer
            }
        };
        headers.remove(TOKEN_HEADER);
        if ours {
            return Caller::Taskpulse;
        }
        let mut any = false;
        let mut h = self.hasher.build_hasher();
        for name in CREDENTIALS {
            for v in headers.get_all(name) {
                any = true;
                std::hash::Hash::hash(name, &mut h);
                std::hash::Hash::hash(v.as_bytes(), &mut h);
            }
        }
        Caller::Engine(if any {
            std::hash::Hasher::finish(&h).max(1)
        } else {
            0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn taskpulse_token_is_recognised_and_taken_off() {
        let c = Callers::new(Some(Secret("s3cret".into())), false);
        let mut h = headers(&[("x-taskpulse-token", "s3cret"), ("x-authorization", "jwt")]);
        assert_eq!(c.identify(&mut h), Caller::Taskpulse);
        assert!(h.get(TOKEN_HEADER).is_none());
        assert!(h.get("x-authorization").is_some(), "the engine's own stays");
        let mut h = headers(&[("authorization", "Bearer s3cret")]);
        assert_eq!(c.identify(&mut h), Caller::Taskpulse);
        assert!(
            h.get("authorization").is_none(),
            "our bearer never reaches the engine"
        );
        let mut h = headers(&[("x-taskpulse-token", "wrong")]);
        assert_eq!(c.identify(&mut h), Caller::Engine(0));
        assert!(h.get(TOKEN_HEADER).is_none());
    }

    #[test]
    fn engine_credentials_make_a_stable_fingerprint() {
        let c = Callers::new(None, false);
        let a = c.identify(&mut headers(&[("x-authorization", "jwt-a")]));
        let a2 = c.identify(&mut headers(&[("x-authorization", "jwt-a")]));
        let b = c.identify(&mut headers(&[("x-authorization", "jwt-b")]));
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(c.identify(&mut HeaderMap::new()), Caller::Engine(0));
    }

    #[test]
    fn what_may_be_recorded() {
        let proof = |token_set, engine_checks| Proof {
            token_set,
            engine_checks,
        };
        // without a token: whatever the engine accepted
        assert!(Caller::Engine(0).may_record(true, proof(false, false)));
        assert!(!Caller::Engine(7).may_record(false, proof(false, false)));
        // with a token: ours; engine credentials prove nothing by a 2xx alone
        assert!(Caller::Taskpulse.may_record(false, proof(true, false)));
        assert!(!Caller::Engine(7).may_record(true, proof(true, false)));
        assert!(!Caller::Engine(0).may_record(true, proof(true, false)));
        // unless the engine is known to check them
        assert!(Caller::Engine(7).may_record(true, proof(true, true)));
        assert!(!Caller::Engine(0).may_record(true, proof(true, true)));
        assert!(!Caller::Engine(7).may_record(false, proof(true, true)));
    }
}
