//! The one retry policy of every compare-and-swap loop in the tree: IPAM
//! (assign, release, `IP=` block claims, pool enable/disable, the IPAM config,
//! calicoctl's release and gc), the CNI plugin's pod records and the node
//! agent's Node registration all read, compute, commit, and on a conflict read
//! again, at most [`Retry::CAS`] times.

use std::fmt::Display;

use crate::StoreError;

/// How many times a compare-and-swap write is attempted before it gives up
/// with [`Exhausted`] (which IPAM reports as Calico's "Max retries hit -
/// excessive concurrent IPAM requests").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    attempts: usize,
}

/// What one attempt of a [`Retry::run`] loop came to.
#[derive(Debug)]
pub enum Cas<T> {
    /// Committed (or nothing to commit): the loop ends with this value.
    Done(T),
    /// A compare-and-swap condition on `key` failed (or `key` changed
    /// under the attempt): read again and retry.
    Conflict { key: String },
}

/// Every attempt of a [`Retry::run`] loop conflicted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {attempts} attempts conflicted, the last on {key}")]
pub struct Exhausted {
    pub what: String,
    pub key: String,
    pub attempts: usize,
}

impl From<Exhausted> for StoreError {
    fn from(e: Exhausted) -> StoreError {
        StoreError::Conflict { key: e.key }
    }
}

impl Retry {
    /// The budget of every CAS loop: 100 attempts, Calico's
    /// `datastoreRetries`.
    ///
    /// Why 100 and not fewer: a conflict means another writer committed, so
    /// the system as a whole made progress and a retry is never spent
    /// waiting on nothing; the budget only decides how long one writer keeps
    /// losing before it gives up. Calico's IPAM client gives up after 100,
    /// and our plugins writing the same blocks do too, so calicoctl's writes
    /// (release, gc, configure, pool enable), the pod records and the Node
    /// registration use the same number: they previously stopped at 20 or 5,
    /// which let a gc or release on a node whose block is busy with ADD/DEL
    /// traffic fail where the plugins themselves would have kept going. Each
    /// attempt is bounded by the datastore timeout and there is no sleep
    /// between attempts (as in Calico), so the worst case is bounded too.
    pub const CAS: Retry = Retry { attempts: 100 };

    /// How many attempts the policy allows.
    pub const fn attempts(self) -> usize {
        self.attempts
    }

    /// Run `attempt` (given the attempt number, 0 first) until it is
    /// [`Cas::Done`] or fails; each [`Cas::Conflict`] is logged (as
    /// `<what>: conflict on <key>, retrying`) and retried. After the last
    /// conflicting attempt: [`Exhausted`], converted into the caller's error.
    pub fn run<T, E: From<Exhausted>>(
        self,
        what: impl Display,
        mut attempt: impl FnMut(usize) -> Result<Cas<T>, E>,
    ) -> Result<T, E> {
        let mut last = String::new();
        for n in 0..self.attempts {
            match attempt(n)? {
                Cas::Done(v) => return Ok(v),
                Cas::Conflict { key } => {
                    log::debug!("{what}: conflict on {key}, retrying");
                    last = key;
                }
            }
        }
        Err(Exhausted { what: what.to_string(), key: last, attempts: self.attempts }.into())
    }
}

impl<T> Cas<T> {
    /// A single-key write's outcome: a conflict is retried, success ends the
    /// loop, any other failure is returned.
    pub fn of_write(r: Result<T, StoreError>) -> Result<Cas<T>, StoreError> {
        match r {
            Ok(v) => Ok(Cas::Done(v)),
            Err(StoreError::Conflict { key }) => Ok(Cas::Conflict { key }),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_retried_up_to_the_budget_then_exhausted() {
        let mut seen = Vec::new();
        let r: Result<(), StoreError> = Retry::CAS.run("test", |n| {
            seen.push(n);
            Ok(Cas::Conflict { key: format!("/k{n}") })
        });
        let last = format!("/k{}", Retry::CAS.attempts() - 1);
        assert!(matches!(r, Err(StoreError::Conflict { key }) if key == last));
        assert_eq!(seen, (0..Retry::CAS.attempts()).collect::<Vec<_>>());
        let r: Result<usize, StoreError> = Retry::CAS
            .run("test", |n| Ok(if n < 3 { Cas::Conflict { key: "/k".into() } } else { Cas::Done(n) }));
        assert_eq!(r.unwrap(), 3);
        // Other failures end the loop at once.
        let mut calls = 0;
        let r: Result<(), StoreError> = Retry::CAS.run("test", |_| {
            calls += 1;
            Err(StoreError::Unavailable("down".into()))
        });
        assert!(matches!(r, Err(StoreError::Unavailable(_))) && calls == 1);
    }

    #[test]
    fn a_write_conflict_is_a_retry() {
        assert!(matches!(Cas::of_write(Ok(1)), Ok(Cas::Done(1))));
        let conflict: Result<i64, _> = Err(StoreError::Conflict { key: "/k".into() });
        assert!(matches!(Cas::of_write(conflict), Ok(Cas::Conflict { key }) if key == "/k"));
        let down: Result<i64, _> = Err(StoreError::Unavailable("x".into()));
        assert!(matches!(Cas::of_write(down), Err(StoreError::Unavailable(_))));
    }
}
