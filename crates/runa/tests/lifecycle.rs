//! The provider lifecycle: phase order, priorities, reverse shutdown, failures, misuse.

use std::sync::{Arc, Mutex};

use runa::{App, BoxError, BoxFuture, Error, Phase, Provider};

type Log = Arc<Mutex<Vec<String>>>;

/// Records every hook it runs; fails the hooks it is told to.
struct Recorder {
    name: &'static str,
    priority: i32,
    log: Log,
    fail: Vec<Phase>,
}

impl Recorder {
    fn new(name: &'static str, log: &Log) -> Self {
        Recorder {
            name,
            priority: 0,
            log: Arc::clone(log),
            fail: Vec::new(),
        }
    }

    fn hook(&self, phase: Phase) -> BoxFuture<'_, Result<(), BoxError>> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{phase}", self.name));
        let fail = self.fail.contains(&phase);
        let name = self.name;
        Box::pin(async move {
            tokio::task::yield_now().await;
            if fail {
                Err(format!("{name} broke in {phase}").into())
            } else {
                Ok(())
            }
        })
    }
}

impl Provider for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    fn init<'a>(&'a mut self, _: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        self.hook(Phase::Init)
    }
    fn register<'a>(&'a mut self, _: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        self.hook(Phase::Register)
    }
    fn boot<'a>(&'a mut self, _: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        self.hook(Phase::Boot)
    }
    fn shutdown<'a>(&'a mut self, _: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        self.hook(Phase::Shutdown)
    }
}

fn taken(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[tokio::test]
async fn phases_run_for_all_providers_in_order_and_shutdown_reverses() {
    let log = Log::default();
    let mut app = App::new();
    app.install(Recorder::new("a", &log)).unwrap();
    app.install(Recorder::new("b", &log)).unwrap();
    app.freeze().await.unwrap();
    assert_eq!(
        taken(&log),
        [
            "a:init",
            "b:init",
            "a:register",
            "b:register",
            "a:boot",
            "b:boot"
        ]
    );
    app.shutdown().await.unwrap();
    assert_eq!(taken(&log), ["b:shut down", "a:shut down"]);
}

#[tokio::test]
async fn lower_priority_runs_first_and_installation_order_breaks_ties() {
    let log = Log::default();
    let mut app = App::new();
    let mut late = Recorder::new("late", &log);
    late.priority = 10;
    let mut early = Recorder::new("early", &log);
    early.priority = -5;
    app.install(late).unwrap();
    app.install(Recorder::new("first-zero", &log)).unwrap();
    app.install(early).unwrap();
    app.install(Recorder::new("second-zero", &log)).unwrap();
    app.freeze().await.unwrap();
    let inits: Vec<String> = taken(&log)
        .into_iter()
        .filter(|e| e.ends_with(":init"))
        .collect();
    assert_eq!(
        inits,
        [
            "early:init",
            "first-zero:init",
            "second-zero:init",
            "late:init"
        ]
    );
    app.shutdown().await.unwrap();
    assert_eq!(
        taken(&log),
        [
            "late:shut down",
            "second-zero:shut down",
            "first-zero:shut down",
            "early:shut down"
        ]
    );
}

#[tokio::test]
async fn a_failing_provider_stops_freeze_with_its_name_and_shutdown_stops_what_started() {
    let log = Log::default();
    let mut app = App::new();
    let mut broken = Recorder::new("db", &log);
    broken.fail = vec![Phase::Register];
    app.install(Recorder::new("cache", &log)).unwrap();
    app.install(broken).unwrap();
    app.install(Recorder::new("http", &log)).unwrap();
    let err = app.freeze().await.unwrap_err();
    assert!(
        matches!(err, Error::Provider { ref provider, phase: Phase::Register, .. } if provider == "db")
    );
    assert_eq!(
        err.to_string(),
        r#"provider "db" failed to register: db broke in register"#
    );
    assert_eq!(
        taken(&log),
        [
            "cache:init",
            "db:init",
            "http:init",
            "cache:register",
            "db:register"
        ]
    );
    assert!(
        runa::default_services().is_none_or(|s| !Arc::ptr_eq(&s, app.services())),
        "a failed app became the default"
    );

    app.shutdown().await.unwrap();
    assert_eq!(
        taken(&log),
        ["http:shut down", "db:shut down", "cache:shut down"]
    );
}

#[tokio::test]
async fn shutdown_goes_on_past_failures_and_reports_them_all() {
    let log = Log::default();
    let mut app = App::new();
    for name in ["a", "b", "c"] {
        let mut recorder = Recorder::new(name, &log);
        if name != "b" {
            recorder.fail = vec![Phase::Shutdown];
        }
        app.install(recorder).unwrap();
    }
    app.freeze().await.unwrap();
    taken(&log);
    let err = app.shutdown().await.unwrap_err();
    assert_eq!(taken(&log), ["c:shut down", "b:shut down", "a:shut down"]);
    match &err {
        Error::Shutdown { failures } => {
            let names: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["c", "a"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        r#"shutdown failed: provider "c": c broke in shut down; provider "a": a broke in shut down"#
    );
}

#[tokio::test]
async fn misuse_is_a_clear_error() {
    let log = Log::default();
    let mut app = App::new();
    assert!(matches!(app.shutdown().await, Err(Error::NotFrozen)));
    app.freeze().await.unwrap();
    assert!(matches!(app.freeze().await, Err(Error::AlreadyFrozen)));
    let err = app.install(Recorder::new("late", &log)).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"cannot install provider "late": the app is already frozen"#
    );
    assert!(
        taken(&log).is_empty(),
        "a provider installed after freeze ran"
    );
    app.shutdown().await.unwrap();
    assert!(matches!(app.shutdown().await, Err(Error::AlreadyShutDown)));
    assert!(matches!(app.freeze().await, Err(Error::AlreadyFrozen)));
}

/// Providers share services through the container, whatever their order.
#[tokio::test]
async fn providers_share_services() {
    struct Maker;
    struct User(Log);
    /// Both providers append their name to one shared list, whoever creates it.
    fn sign(app: &App, name: &str) {
        app.services()
            .get_or_provide_with(|| Mutex::new(Vec::<String>::new()))
            .lock()
            .unwrap()
            .push(name.into());
    }
    impl Provider for Maker {
        fn name(&self) -> &str {
            "maker"
        }
        fn register<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
            sign(app, "maker");
            Box::pin(async { Ok(()) })
        }
    }
    impl Provider for User {
        fn name(&self) -> &str {
            "user"
        }
        fn register<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
            sign(app, "user");
            Box::pin(async { Ok(()) })
        }
        fn boot<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
            Box::pin(async move {
                let shared = app.get::<Mutex<Vec<String>>>()?;
                self.0
                    .lock()
                    .unwrap()
                    .extend(shared.lock().unwrap().iter().cloned());
                Ok(())
            })
        }
    }
    let log = Log::default();
    let mut app = App::new();
    app.install(User(Arc::clone(&log))).unwrap();
    app.install(Maker).unwrap();
    app.freeze().await.unwrap();
    assert_eq!(taken(&log), ["user", "maker"]);
    assert!(matches!(
        app.get::<u128>(),
        Err(Error::MissingService { type_name: "u128" })
    ));
}
