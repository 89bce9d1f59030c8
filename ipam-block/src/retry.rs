//! IPAM's compare-and-swap loops use the tree's one retry policy
//! ([`calico_store::retry`]); running out of attempts is Calico's
//! [`IpamError::MaxRetries`] ("Max retries hit - excessive concurrent IPAM
//! requests").

pub use calico_store::retry::{Cas, Exhausted, Retry};

use std::fmt::Display;

use crate::IpamError;

/// [`Retry::CAS`]`.run` for IPAM's callers, whose errors come from
/// [`IpamError`]: running out of attempts is [`IpamError::MaxRetries`].
pub fn cas<T, E: From<IpamError>>(
    what: impl Display,
    mut attempt: impl FnMut(usize) -> Result<Cas<T>, E>,
) -> Result<T, E> {
    /// The caller's error, or the policy's.
    enum Failed<E> {
        Attempt(E),
        Exhausted(Exhausted),
    }
    impl<E> From<Exhausted> for Failed<E> {
        fn from(e: Exhausted) -> Self {
            Failed::Exhausted(e)
        }
    }
    Retry::CAS.run(what, |n| attempt(n).map_err(Failed::Attempt)).map_err(|f| match f {
        Failed::Attempt(e) => e,
        Failed::Exhausted(e) => IpamError::from(e).into(),
    })
}

impl From<Exhausted> for IpamError {
    fn from(e: Exhausted) -> IpamError {
        log::debug!("{e}");
        IpamError::MaxRetries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_store::StoreError;

    #[test]
    fn running_out_of_attempts_is_calicos_max_retries() {
        let r: Result<(), IpamError> = Retry::CAS.run("test", |_| Ok(Cas::Conflict { key: "/k".into() }));
        assert!(matches!(r, Err(IpamError::MaxRetries)));
        let r: Result<(), IpamError> = cas("test", |_| Ok(Cas::Conflict { key: "/k".into() }));
        assert!(matches!(r, Err(IpamError::MaxRetries)));
        assert_eq!(IpamError::MaxRetries.to_string(), "Max retries hit - excessive concurrent IPAM requests");
        let r: Result<(), IpamError> = cas("test", |_| Err(StoreError::Unavailable("down".into()).into()));
        assert!(matches!(r, Err(IpamError::Store(StoreError::Unavailable(_)))));
    }
}
