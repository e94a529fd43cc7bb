//! The typed service container that providers share services through.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use crate::Error;

type Entry = (Arc<dyn Any + Send + Sync>, &'static str);

/// Services shared between providers and the rest of the app, one per type.
///
/// ```
/// let services = runa::Services::default();
/// services.provide(String::from("hello"));
/// assert_eq!(*services.get::<String>()?, "hello");
/// assert!(services.try_get::<u32>().is_none());
/// # Ok::<(), runa::Error>(())
/// ```
#[derive(Default)]
pub struct Services {
    entries: RwLock<HashMap<TypeId, Entry>>,
}

impl Services {
    /// Provides `value` as the service of type `T`, replacing any earlier one; returns it.
    ///
    /// ```
    /// let services = runa::Services::default();
    /// services.provide(1u32);
    /// services.provide(2u32);
    /// assert_eq!(*services.get::<u32>()?, 2);
    /// # Ok::<(), runa::Error>(())
    /// ```
    pub fn provide<T: Any + Send + Sync>(&self, value: T) -> Arc<T> {
        self.provide_arc(Arc::new(value))
    }

    /// Provides an already shared service of type `T`, replacing any earlier one.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let services = runa::Services::default();
    /// let shared = Arc::new(String::from("x"));
    /// services.provide_arc(Arc::clone(&shared));
    /// assert!(Arc::ptr_eq(&services.get::<String>()?, &shared));
    /// # Ok::<(), runa::Error>(())
    /// ```
    pub fn provide_arc<T: Any + Send + Sync>(&self, value: Arc<T>) -> Arc<T> {
        let entry: Entry = (
            Arc::clone(&value) as Arc<dyn Any + Send + Sync>,
            type_name::<T>(),
        );
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(TypeId::of::<T>(), entry);
        value
    }

    /// The service of type `T`.
    ///
    /// # Errors
    ///
    /// [`Error::MissingService`] naming the type when none was provided.
    ///
    /// ```
    /// let services = runa::Services::default();
    /// let err = services.get::<u64>().unwrap_err();
    /// assert_eq!(err.to_string(), "no service of type u64 was provided");
    /// ```
    pub fn get<T: Any + Send + Sync>(&self) -> Result<Arc<T>, Error> {
        self.try_get().ok_or(Error::MissingService {
            type_name: type_name::<T>(),
        })
    }

    /// The service of type `T`, if one was provided.
    ///
    /// ```
    /// let services = runa::Services::default();
    /// assert!(services.try_get::<String>().is_none());
    /// ```
    pub fn try_get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let (service, _) = entries.get(&TypeId::of::<T>())?;
        Arc::clone(service).downcast::<T>().ok()
    }

    /// The service of type `T`, provided first by `make` if there is none: the one way for
    /// several providers to share a service whatever their order.
    ///
    /// ```
    /// let services = runa::Services::default();
    /// let first = services.get_or_provide_with(|| vec![1]);
    /// let second = services.get_or_provide_with(|| vec![2]);
    /// assert!(std::sync::Arc::ptr_eq(&first, &second));
    /// ```
    pub fn get_or_provide_with<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = entries
            .get(&TypeId::of::<T>())
            .and_then(|(service, _)| Arc::clone(service).downcast::<T>().ok())
        {
            return existing;
        }
        let value = Arc::new(make());
        let entry: Entry = (
            Arc::clone(&value) as Arc<dyn Any + Send + Sync>,
            type_name::<T>(),
        );
        entries.insert(TypeId::of::<T>(), entry);
        value
    }
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<&str> = entries.values().map(|(_, name)| *name).collect();
        names.sort_unstable();
        f.debug_struct("Services").field("types", &names).finish()
    }
}
