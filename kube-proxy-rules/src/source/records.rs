//! The pod records: a thread that waits on the datastore
//! ([`Datastore::wait_for_change`]: the store's own change notification
//! where it has one) and sends [`Event::Records`] when the revision moves.

use std::sync::Arc;
use std::time::Duration;

use calico_store::Datastore;

use super::{Event, Sender};

/// How long one wait lasts before it is renewed (and the receiver checked).
const WAIT: Duration = Duration::from_secs(30);

/// Follow `store` from `after` on a thread of its own, until the receiver is gone.
pub fn watch(store: Arc<dyn Datastore>, mut after: i64, tx: Sender) -> Result<(), String> {
    std::thread::Builder::new()
        .name("pod-records".into())
        .spawn(move || loop {
            match store.wait_for_change(after, WAIT) {
                Ok(Some(rev)) => {
                    after = rev;
                    if tx.send(Event::Records).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    log::error!("waiting for pod record changes: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("starting the pod-records thread: {e}"))
}
