//! The process-wide default app: the services of the most recently frozen app.

use std::sync::{Arc, Mutex, PoisonError};

use crate::Services;

static DEFAULT: Mutex<Option<(u64, Arc<Services>)>> = Mutex::new(None);

/// The services of the most recently frozen app that has not shut down (or been dropped).
///
/// Libraries use it to offer a default without globals of their own, as
/// `runa_lock::default()` does.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa::Error> {
/// let mut app = runa::App::new();
/// app.provide(42u32);
/// app.freeze().await?;
/// assert_eq!(*runa::default_services().unwrap().get::<u32>()?, 42);
/// app.shutdown().await?;
/// assert!(runa::default_services().is_none());
/// # Ok(())
/// # }
/// ```
pub fn default_services() -> Option<Arc<Services>> {
    let slot = DEFAULT.lock().unwrap_or_else(PoisonError::into_inner);
    slot.as_ref().map(|(_, services)| Arc::clone(services))
}

pub(crate) fn set(app: u64, services: Arc<Services>) {
    *DEFAULT.lock().unwrap_or_else(PoisonError::into_inner) = Some((app, services));
}

/// Clears the default if it is `app`'s.
pub(crate) fn clear(app: u64) {
    let mut slot = DEFAULT.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.as_ref().is_some_and(|(id, _)| *id == app) {
        *slot = None;
    }
}
