//! `runa-lock run` against a real redis-server: exit codes, environment, busy keys, waits,
//! lost leases and signals.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use support::*;

fn pid_of(child: &std::process::Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("a pid"))
}

#[test]
fn the_exit_status_is_passed_through_and_the_lock_released() {
    let server = RedisServer::start();
    let url = server.url();
    finish(&mut runa_lock(&[
        "run", "--url", &url, "k", "--", "sh", "-c", "exit 7",
    ]))
    .expect(7, false);
    finish(&mut runa_lock(&["run", "--url", &url, "k", "--", "true"])).expect(0, false);
    // Killed by a signal: 128 + N, as a shell says.
    finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "k",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]))
    .expect(143, false);
    assert!(
        !exists(&server, &lock_key("runa:lock:", "", "k")),
        "released"
    );
}

#[test]
fn the_command_gets_the_key_fencing_number_and_token() {
    let server = RedisServer::start();
    let url = server.url();
    let script = r#"echo "$RUNA_LOCK_KEY $RUNA_LOCK_FENCING $RUNA_LOCK_TOKEN""#;
    let first = finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "daily report",
        "--",
        "sh",
        "-c",
        script,
    ]));
    first.expect(0, false);
    let fields: Vec<&str> = first.stdout.trim_end().rsplitn(3, ' ').collect();
    let [token, fencing, key] = fields[..] else {
        panic!("{first:#?}")
    };
    assert_eq!(key, "daily report");
    assert_eq!(token.len(), 32, "{token}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    let fencing: u64 = fencing.parse().expect("a fencing number");
    assert!(fencing > 0);
    // Nothing but the command's output on stdout.
    assert_eq!(first.stdout.lines().count(), 1, "{first:#?}");

    let second = finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "daily report",
        "--",
        "sh",
        "-c",
        script,
    ]));
    let next: u64 = second
        .stdout
        .split(' ')
        .nth(2)
        .and_then(|f| f.parse().ok())
        .expect("fencing");
    assert!(
        next > fencing,
        "fencing numbers grow: {fencing} then {next}"
    );
}

#[test]
fn a_busy_key_exits_75_without_running_the_command() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let _: () = server.command(&[
        "SET",
        &lock_key("runa:lock:", "", "k"),
        "someone-else",
        "PX",
        "60000",
    ]);

    let busy = finish(&mut runa_lock(&[
        "run", "--url", &url, "k", "--", "sh", "-c", &touch,
    ]));
    busy.expect(75, true);
    assert!(busy.stderr.contains("\"k\""), "{busy:#?}");
    assert!(busy.stderr.contains("--wait"), "{busy:#?}");
    assert_eq!(busy.stdout, "");
    finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "--conflict-exit-code",
        "0",
        "-q",
        "k",
        "--",
        "sh",
        "-c",
        &touch,
    ]))
    .expect(0, false);
    let briefly = finish(&mut runa_lock(&[
        "run", "--url", &url, "--wait", "1ms", "k", "--", "sh", "-c", &touch,
    ]));
    briefly.expect(75, true);
    assert!(briefly.stderr.contains("after waiting 1ms"), "{briefly:#?}");
    let waiting = Instant::now();
    finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "--conflict-exit-code",
        "3",
        "--wait",
        "200ms",
        "k",
        "--",
        "sh",
        "-c",
        &touch,
    ]))
    .expect(3, true);
    let waited = waiting.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "--wait was heeded: {waited:?}"
    );
    assert!(!marker.exists(), "the command never ran");
    assert_eq!(
        server.command::<String>(&["GET", &lock_key("runa:lock:", "", "k")]),
        "someone-else"
    );
}

#[test]
fn wait_runs_the_command_after_the_holder_releases() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let first_script = format!("sleep 1; echo first >> {}", log.display());
    let second_script = format!("echo second >> {}", log.display());
    let first = start(&["run", "--url", &url, "k", "--", "sh", "-c", &first_script]);
    assert!(held_soon(&server, &lock_key("runa:lock:", "", "k")));
    let second = finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "--wait",
        "30s",
        "k",
        "--",
        "sh",
        "-c",
        &second_script,
    ]));
    second.expect(0, false);
    wait(first, Duration::from_secs(30)).expect(0, false);
    assert_eq!(read(&log), "first\nsecond\n");
}

#[test]
fn a_lease_taken_away_stops_the_command_and_exits_76() {
    let server = RedisServer::start();
    let url = server.url();
    let key = lock_key("runa:lock:", "", "k");
    let child = start(&[
        "run", "--url", &url, "--ttl", "1s", "k", "--", "sleep", "60",
    ]);
    assert!(held_soon(&server, &key));
    let _: () = server.command(&["SET", &key, "intruder", "PX", "60000"]);
    // Renewals come every third of a second: a few of them, with a generous margin.
    let lost = wait(child, Duration::from_secs(20));
    lost.expect(76, true);
    assert!(lost.stderr.contains("lost the lock"), "{lost:#?}");
    assert!(lost.stderr.contains("SIGTERM"), "{lost:#?}");
    assert_eq!(
        server.command::<String>(&["GET", &key]),
        "intruder",
        "the new holder keeps it"
    );
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_after_kill_after() {
    let server = RedisServer::start();
    let url = server.url();
    let key = lock_key("runa:lock:", "", "k");
    // The ignored SIGTERM is inherited by `sleep`.
    let child = start(&[
        "run",
        "--url",
        &url,
        "--ttl",
        "1s",
        "--kill-after",
        "1s",
        "k",
        "--",
        "sh",
        "-c",
        "trap '' TERM; sleep 60",
    ]);
    assert!(held_soon(&server, &key));
    let _: () = server.command(&["SET", &key, "intruder", "PX", "60000"]);
    let lost = wait(child, Duration::from_secs(30));
    lost.expect(76, true);
    assert!(lost.stderr.contains("SIGKILL"), "{lost:#?}");
}

#[test]
fn group_members_that_outlive_the_command_are_killed_after_kill_after() {
    let server = RedisServer::start();
    let url = server.url();
    let key = lock_key("runa:lock:", "", "k");
    let dir = tempfile::tempdir().unwrap();
    let (member, started) = (dir.path().join("member"), dir.path().join("started"));
    // The command starts a member of its group that ignores SIGTERM, then waits; on SIGTERM
    // the command (the group's leader) exits at once and the member stays.
    let script = format!(
        r#"sh -c 'trap "" TERM; echo $$ > {member}; exec sleep 60' &
        while [ ! -s {member} ]; do sleep 0.1; done; touch {started}; sleep 60"#,
        member = member.display(),
        started = started.display()
    );
    let child = start(&[
        "run",
        "--url",
        &url,
        "--ttl",
        "1s",
        "--kill-after",
        "2s",
        "k",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(eventually(Duration::from_secs(10), || started.exists()));
    let pid: i32 = read(&member).trim().parse().expect("the member's pid");
    let pid = Pid::from_raw(pid);
    let _: () = server.command(&["SET", &key, "intruder", "PX", "60000"]);
    let lost = wait(child, Duration::from_secs(30));
    // Dead: gone, or a zombie not yet reaped by its new parent.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let dead = kill(pid, None).is_err()
        || state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
    if !dead {
        let _ = kill(pid, Signal::SIGKILL);
    }
    assert!(dead, "the member outlived runa-lock: {state}");
    lost.expect(76, true);
    assert!(lost.stderr.contains("SIGKILL"), "{lost:#?}");
}

/// A shell script that touches `started`, then loops until `signal` comes, which it writes
/// to `got` (in lower case) before exiting with `code`; and those two paths in `dir`.
fn trapping(dir: &tempfile::TempDir, signal: &str, code: u8) -> (String, PathBuf, PathBuf) {
    let (started, got) = (dir.path().join("started"), dir.path().join("got"));
    let script = format!(
        "trap 'echo {name} > {got}; exit {code}' {signal}; touch {started}; while :; do sleep 0.1; done",
        name = signal.to_lowercase(),
        got = got.display(),
        started = started.display()
    );
    (script, started, got)
}

#[test]
fn sigterm_to_runa_lock_reaches_the_command_and_the_lock_is_freed() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (script, started, got) = trapping(&dir, "TERM", 5);
    let child = start(&["run", "--url", &url, "k", "--", "sh", "-c", &script]);
    assert!(eventually(Duration::from_secs(10), || started.exists()));
    kill(pid_of(&child), Signal::SIGTERM).unwrap();
    let ended = wait(child, Duration::from_secs(20));
    assert_eq!(ended.code, Some(5), "{ended:#?}");
    // sh may say that its `sleep` was terminated; runa-lock says nothing.
    assert!(!ended.stderr.contains("runa-lock"), "{ended:#?}");
    assert_eq!(read(&got), "term\n");
    assert!(
        !exists(&server, &lock_key("runa:lock:", "", "k")),
        "released"
    );

    // A command that does not catch it ends with it: 128 + 15.
    // (A signal before the command starts ends runa-lock with 143 too, but with a message.)
    let script = format!("touch {}; exec sleep 60", started.display());
    std::fs::remove_file(&started).unwrap();
    let child = start(&["run", "--url", &url, "k", "--", "sh", "-c", &script]);
    assert!(eventually(Duration::from_secs(10), || started.exists()));
    kill(pid_of(&child), Signal::SIGTERM).unwrap();
    wait(child, Duration::from_secs(20)).expect(143, false);
    assert!(
        !exists(&server, &lock_key("runa:lock:", "", "k")),
        "released"
    );
}

#[test]
fn sigterm_while_waiting_ends_runa_lock_without_running_the_command() {
    let server = RedisServer::start();
    let url = server.url();
    let key = lock_key("runa:lock:", "", "k");
    let dir = tempfile::tempdir().unwrap();
    let (marker, stop) = (dir.path().join("ran"), dir.path().join("stop"));
    let hold = format!("while [ ! -e {} ]; do sleep 0.1; done", stop.display());
    let holder = start(&["run", "--url", &url, "k", "--", "sh", "-c", &hold]);
    assert!(held_soon(&server, &key));
    let token: String = server.command(&["GET", &key]);

    let touch = format!("touch {}", marker.display());
    let waiter = start(&[
        "run", "--url", &url, "--wait", "30s", "k", "--", "sh", "-c", &touch,
    ]);
    // Waiting: subscribed to the lock's release channel, so past installing its handlers.
    assert!(eventually(Duration::from_secs(10), || {
        !server
            .command::<Vec<String>>(&["PUBSUB", "CHANNELS"])
            .is_empty()
    }));
    kill(pid_of(&waiter), Signal::SIGTERM).unwrap();
    // Well before its --wait runs out.
    let ended = wait(waiter, Duration::from_secs(15));
    ended.expect(143, true);
    assert!(ended.stderr.contains("SIGTERM"), "{ended:#?}");
    assert!(!marker.exists(), "the command never ran");

    assert_eq!(
        server.command::<String>(&["GET", &key]),
        token,
        "the holder keeps it"
    );
    std::fs::write(&stop, "").unwrap();
    wait(holder, Duration::from_secs(20)).expect(0, false);
    assert!(!exists(&server, &key), "released");
}

#[test]
fn a_terminal_ctrl_c_reaches_the_command_once() {
    use std::os::unix::process::CommandExt;

    let server = RedisServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (started, got, stop, ids) = (
        dir.path().join("started"),
        dir.path().join("got"),
        dir.path().join("stop"),
        dir.path().join("ids"),
    );
    // The command records its pid and its process group (field 5 of /proc/PID/stat).
    let script = format!(
        "trap 'echo int >> {got}' INT; echo $$ $(cut -d ' ' -f 5 /proc/$$/stat) > {ids}; \
         touch {started}; while [ ! -e {stop} ]; do sleep 0.1; done",
        got = got.display(),
        ids = ids.display(),
        started = started.display(),
        stop = stop.display()
    );
    // runa-lock in a group of its own, as a terminal's foreground job: Ctrl-C signals the group.
    let child =
        spawn(runa_lock(&["run", "--url", &url, "k", "--", "sh", "-c", &script]).process_group(0));
    assert!(eventually(Duration::from_secs(10), || started.exists()));
    let ids = read(&ids);
    let [pid, group] = ids.split_whitespace().collect::<Vec<_>>()[..] else {
        panic!("{ids:?}")
    };
    assert_eq!(group, pid, "the command leads a process group of its own");
    assert_ne!(group, child.id().to_string(), "not runa-lock's group");
    killpg(pid_of(&child), Signal::SIGINT).unwrap();
    assert!(eventually(Duration::from_secs(10), || !read(&got).is_empty()));
    std::fs::write(&stop, "").unwrap();
    wait(child, Duration::from_secs(20)).expect(0, false);
    assert_eq!(read(&got), "int\n", "once, not twice");
}

#[test]
fn an_unreachable_store_exits_69_naming_it_without_the_password() {
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let url = format!("redis://:s3cret@127.0.0.1:{port}");
    let down = finish(&mut runa_lock(&[
        "run", "--url", &url, "k", "--", "sh", "-c", &touch,
    ]));
    down.expect(69, true);
    assert!(
        down.stderr.starts_with(&format!(
            "runa-lock: cannot reach redis at 127.0.0.1:{port} (connection refused)"
        )),
        "{down:#?}"
    );
    assert!(down.stderr.contains("RUNA_LOCK_URL"), "{down:#?}");
    assert!(!down.stderr.contains("s3cret"), "{down:#?}");
    assert!(!marker.exists(), "the command never ran");
}

#[test]
fn bad_usage_exits_64() {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    for args in [
        &["run", "--url", &url, "--ttl", "soon", "k", "--", "true"][..],
        &["run", "--url", &url, "--ttl", "0s", "k", "--", "true"],
        &[
            "run",
            "--url",
            &url,
            "--wait",
            "5 parsecs",
            "k",
            "--",
            "true",
        ],
        &["run", "--url", &url, "--kill-after", "x", "k", "--", "true"],
        &["run", "--url", &url, "--bogus", "k", "--", "true"],
        &["run", "--url", &url, "k"],
        &["run", "--url", &url, "--locker", "jobs", "k", "--", "true"],
        &[
            "run",
            "--url",
            "postgres://u:s3cret@h:notaport/db",
            "k",
            "--",
            "true",
        ],
        &["run", "--url", "http://u:s3cret@h", "k", "--", "true"],
        // A stray argument, which clap echoes: a URL's password must not show.
        &["status", "k", "redis://:s3cret@h:6379"],
        &["frobnicate"],
        &[],
    ] {
        let outcome = finish(&mut runa_lock(args));
        assert_eq!(outcome.code, Some(64), "{args:?}: {outcome:#?}");
        assert!(!outcome.stderr.contains("s3cret"), "{args:?}: {outcome:#?}");
        outcome.expect(64, true);
    }
    let ttl = finish(&mut runa_lock(&[
        "run", "--url", &url, "--ttl", "soon", "k", "--", "true",
    ]));
    assert!(
        ttl.stderr.contains("--ttl") && ttl.stderr.contains("not a duration"),
        "{ttl:#?}"
    );
    let postgres = finish(&mut runa_lock(&[
        "run",
        "--url",
        "postgres://h/db",
        "k",
        "--",
        "true",
    ]));
    postgres.expect(64, true);
    assert!(
        postgres.stderr.contains("no user") && postgres.stderr.contains("postgres://user@host"),
        "{postgres:#?}"
    );
}

#[test]
fn a_missing_command_exits_127_and_frees_the_lock() {
    let server = RedisServer::start();
    let url = server.url();
    let missing = finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "k",
        "--",
        "no-such-command-here",
    ]));
    missing.expect(127, true);
    assert!(
        missing.stderr.contains("no-such-command-here"),
        "{missing:#?}"
    );
    assert!(
        !exists(&server, &lock_key("runa:lock:", "", "k")),
        "released"
    );
    let dir = tempfile::tempdir().unwrap();
    finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "k",
        "--",
        dir.path().to_str().unwrap(),
    ]))
    .expect(126, true);
}

#[test]
fn help_and_version_exit_0_with_an_example_per_subcommand() {
    let run = finish(&mut runa_lock(&["run", "--help"]));
    run.expect(0, false);
    assert!(
        run.stdout.contains("Examples:") && run.stdout.contains("Grandchildren"),
        "{run:#?}"
    );
    let status = finish(&mut runa_lock(&["status", "--help"]));
    status.expect(0, false);
    assert!(
        status.stdout.contains("runa-lock status --json"),
        "{status:#?}"
    );
    let version = finish(&mut runa_lock(&["--version"]));
    version.expect(0, false);
    assert!(version.stdout.starts_with("runa-lock "), "{version:#?}");
}

#[test]
fn verbose_logs_acquisition_renewals_and_release_with_the_fencing_number() {
    let server = RedisServer::start();
    let url = server.url();
    let script = r#"echo "$RUNA_LOCK_FENCING"; sleep 1"#;
    let logged = finish(&mut runa_lock(&[
        "run", "-v", "--url", &url, "--ttl", "1s", "k", "--", "sh", "-c", script,
    ]));
    assert_eq!(logged.code, Some(0), "{logged:#?}");
    let fencing = logged.stdout.trim();
    assert!(!fencing.is_empty(), "{logged:#?}");
    let with_fencing = format!("fencing={fencing}");
    for event in ["acquired", "renewed", "released"] {
        assert!(
            logged
                .stderr
                .lines()
                .any(|l| l.contains(event) && l.contains(&with_fencing)),
            "{event} with {with_fencing}: {logged:#?}"
        );
    }
}

/// Ctrl-Z (SIGTSTP) does not stop runa-lock, which would stop renewing while the command runs
/// on in its own group; SIGQUIT is passed on to the command like SIGTERM.
#[test]
fn sigtstp_is_ignored_and_sigquit_reaches_the_command() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (script, started, got) = trapping(&dir, "QUIT", 7);
    // A ttl of 1 s: stopped for the 2 s below, runa-lock would lose the lease (exit 76).
    let child = start(&[
        "run", "--url", &url, "--ttl", "1s", "k", "--", "sh", "-c", &script,
    ]);
    assert!(eventually(Duration::from_secs(10), || started.exists()));
    let pid = pid_of(&child);
    kill(pid, Signal::SIGTSTP).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    kill(pid, Signal::SIGQUIT).unwrap();
    let ended = wait(child, Duration::from_secs(20));
    assert_eq!(ended.code, Some(7), "{ended:#?}");
    assert_eq!(read(&got), "quit\n");
    assert!(
        !exists(&server, &lock_key("runa:lock:", "", "k")),
        "released"
    );
}
