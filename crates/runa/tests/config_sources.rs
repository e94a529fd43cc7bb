//! Config sources without environment variables: files by stem, inline documents, order,
//! and every error a source can produce.

use std::fs;

use runa::{App, Error};

async fn frozen(app: App) -> Result<App, Error> {
    let mut app = app;
    app.freeze().await?;
    Ok(app)
}

#[tokio::test]
async fn each_file_fills_the_table_named_by_its_stem() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("lock.toml"),
        "[lockers.jobs]\nttl = \"30s\"",
    )
    .unwrap();
    fs::write(dir.path().join("redis.toml"), "url = \"redis://a\"").unwrap();
    fs::write(dir.path().join("notes.txt"), "not config").unwrap();
    let app = frozen(App::new().config_dir(dir.path())).await.unwrap();
    let config = app.config();
    assert_eq!(
        config
            .get::<String>("lock.lockers.jobs.ttl")
            .unwrap()
            .as_deref(),
        Some("30s")
    );
    assert_eq!(
        config.get::<String>("redis.url").unwrap().as_deref(),
        Some("redis://a")
    );
    assert_eq!(
        config.origin("redis.url"),
        Some(dir.path().join("redis.toml").display().to_string())
    );
}

#[tokio::test]
async fn overlays_for_other_environments_are_ignored_without_runa_env() {
    // RUNA_ENV is not set in this test binary (see tests/env_overrides.rs for it).
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("lock.toml"), "ttl = \"1s\"").unwrap();
    fs::write(dir.path().join("lock.production.toml"), "ttl = \"2s\"").unwrap();
    let app = frozen(App::new().config_dir(dir.path())).await.unwrap();
    assert_eq!(
        app.config().get::<String>("lock.ttl").unwrap().as_deref(),
        Some("1s")
    );
}

#[tokio::test]
async fn documents_override_directories_in_call_order() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("lock.toml"), "a = 1\nb = 1\nc = 1").unwrap();
    let file = dir.path().join("extra.document");
    fs::write(&file, "[lock]\nb = 2\nc = 2").unwrap();
    // The directory is given last but still sits below the documents.
    let app = frozen(
        App::new()
            .config_file(&file)
            .config_toml("[lock]\nc = 3")
            .config_dir(dir.path()),
    )
    .await
    .unwrap();
    let config = app.config();
    assert_eq!(config.get::<i64>("lock.a").unwrap(), Some(1));
    assert_eq!(config.get::<i64>("lock.b").unwrap(), Some(2));
    assert_eq!(config.get::<i64>("lock.c").unwrap(), Some(3));
    assert_eq!(config.origin("lock.b"), Some(file.display().to_string()));
    assert_eq!(config.origin("lock.c").as_deref(), Some("inline TOML #1"));
}

#[tokio::test]
async fn a_missing_directory_is_an_error_naming_it() {
    let err = frozen(App::new().config_dir("/no/such/runa/config"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConfigDir { .. }));
    assert!(
        err.to_string()
            .starts_with("config directory /no/such/runa/config cannot be read: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_file_is_an_error_naming_it() {
    let err = frozen(App::new().config_file("/no/such/runa.toml"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("cannot read the file: "),
        "{err}"
    );
    assert!(err.to_string().ends_with(" in /no/such/runa.toml"), "{err}");
}

#[tokio::test]
async fn malformed_toml_names_the_file_and_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.toml");
    fs::write(&path, "[lockers.jobs]\nttl = \n").unwrap();
    let err = frozen(App::new().config_dir(dir.path())).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("invalid TOML at line 2, column 7: "),
        "{text}"
    );
    assert!(text.ends_with(&format!(" in {}", path.display())), "{text}");

    let err = frozen(App::new().config_toml("ok = 1").config_toml("[broken"))
        .await
        .unwrap_err();
    assert!(err.to_string().ends_with(" in inline TOML #2"), "{err}");
}

#[tokio::test]
async fn type_errors_name_the_path_the_value_and_the_file() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Redis {
        db: u8,
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("redis.toml"), "db = \"seven\"").unwrap();
    let app = frozen(App::new().config_dir(dir.path())).await.unwrap();
    let err = app.config().get::<Redis>("redis").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            r#"redis.db: invalid type: found string "seven", expected u8 in {}"#,
            dir.path().join("redis.toml").display()
        )
    );
    assert!(app.config().get::<Redis>("mail").unwrap().is_none());
}
