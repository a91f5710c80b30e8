//! The `ckpt` binary, run as a user would: exit codes, output, and error messages.

use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::cli::command;

fn ckpt(args: &[&str]) -> Output {
    command().args(args).output().expect("the ckpt binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn store_arg(dir: &Path) -> String {
    dir.join("store")
        .to_str()
        .expect("temp dir is UTF-8")
        .to_owned()
}

#[test]
fn demo_crashes_resumes_and_prints_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_arg(dir.path());
    let out = ckpt(&["--store", &store, "demo", "--steps", "4"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("resuming from demo-"), "{stdout}");
    assert!(stdout.contains("(step 2)"), "{stdout}");
    // "resuming from demo-<millis>@2 (step 2)"
    let resumed = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("resuming from "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a resuming line");
    let (exec, version) = resumed.rsplit_once('@').expect("an id");
    assert_eq!(version, "2");
    // One history line per step: version, id, node, time and metadata.
    let history: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("history of"))
        .filter(|l| l.contains(&format!("{exec}@")) && l.contains("source=demo"))
        .collect();
    assert_eq!(history.len(), 4, "{stdout}");
    for (i, (line, node)) in history
        .iter()
        .zip(["plan", "search", "answer", "plan"])
        .enumerate()
    {
        let v = i + 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], v.to_string(), "{line}");
        assert_eq!(cols[1], format!("{exec}@{v}"), "{line}");
        assert_eq!(cols[2], node, "{line}");
        assert!(line.contains(&format!("step={v}")), "{line}");
    }
    assert!(stdout.contains("stored 4 checkpoints"), "{stdout}");

    // The store is durable: a second run (a new execution) works on the same directory.
    let again = ckpt(&["demo", "--steps", "2", "--store", &store]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("resuming from"));
}

#[test]
fn demo_on_memory_resumes_too() {
    let out = ckpt(&["--store", "memory://", "demo", "--steps", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("(step 1)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn bench_prints_one_consistent_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_arg(dir.path());
    let out = ckpt(&[
        "bench",
        "--workload",
        "conversation",
        "--threads",
        "2",
        "--steps",
        "20",
        "--json",
        "--store",
        &store,
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let r: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
    let num = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number in {r}"))
    };
    assert_eq!(r["workload"], "conversation");
    assert_eq!(r["store"], store.as_str());
    assert_eq!(r["threads"], 2);
    assert_eq!(r["steps"], 20);
    assert_eq!(r["saves"], 40);
    assert!(num("seconds") > 0.0);
    assert!(num("saves_per_s") > 0.0);
    let implied = num("saves") / num("seconds");
    assert!((implied / num("saves_per_s") - 1.0).abs() < 0.1, "{r}");
    for k in [
        "load_latest_ms",
        "load_latest_cold_ms",
        "load_random_ms",
        "list_ms",
        "history_ms",
    ] {
        assert!(num(k) >= 0.0, "{k} in {r}");
    }
    // 40 states, the last of each execution holding 20 messages of ~600 bytes.
    assert!(num("bytes_logical") > 2.0 * 20.0 * 600.0, "{r}");
    assert!(num("bytes_written") > 0.0, "{r}");
    // Deltas and shared blobs: far less is written than the states offered.
    assert!(num("bytes_written") < num("bytes_logical"), "{r}");
    assert!(num("bytes_stored") > 0.0, "{r}");

    // The same store again: new executions, so it works; and memory:// reports its own size.
    let again = ckpt(&[
        "bench",
        "--threads",
        "1",
        "--steps",
        "3",
        "--json",
        "--store",
        &store,
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let mem = ckpt(&[
        "bench",
        "--threads",
        "1",
        "--steps",
        "3",
        "--json",
        "--store",
        "memory://",
    ]);
    assert!(mem.status.success(), "{}", text(&mem.stderr));
    let r: serde_json::Value = serde_json::from_str(text(&mem.stdout).trim()).unwrap();
    assert!(r["bytes_stored"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn bench_without_a_store_uses_a_scratch_directory_and_removes_it() {
    let out = ckpt(&["bench", "--threads", "1", "--steps", "2", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let store = r["store"].as_str().expect("the store is named");
    assert!(store.contains("ckpt-bench-"), "{r}");
    assert!(!Path::new(store).exists(), "{store} was left behind");
    assert!(r["bytes_stored"].as_u64().unwrap() > 0, "{r}");

    let human = ckpt(&["bench", "--threads", "1", "--steps", "2"]);
    assert!(human.status.success(), "{}", text(&human.stderr));
    let stdout = text(&human.stdout);
    assert!(
        stdout.contains("conversation workload on") && stdout.contains("saves/s"),
        "{stdout}"
    );
}

#[test]
fn an_invalid_url_is_a_helpful_error() {
    for args in [
        &["--store", "ftp://x", "demo"][..],
        &["bench", "--store", "ftp://x", "--steps", "2", "--json"][..],
    ] {
        let out = ckpt(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains("ftp"), "{stderr}");
        assert!(
            stderr.contains("memory://") && stderr.contains("sled://"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
}

#[test]
fn passwords_are_not_echoed() {
    let out = ckpt(&["--store", "postgres://bob:hunter2@db/app", "demo"]);
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("PostgreSQL"), "{all}");
}

#[test]
fn usage_errors_exit_non_zero() {
    let out = ckpt(&["bench", "--workload", "nope"]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("conversation"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(ckpt(&["bench", "--threads", "0"]).status.code(), Some(2));
    assert_eq!(ckpt(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(ckpt(&[]).status.code(), Some(2));
}

#[test]
fn help_describes_every_option() {
    let top = text(&ckpt(&["--help"]).stdout);
    for word in ["--store", "CKPT_STORE", "demo", "bench", "./ckpt-data"] {
        assert!(top.contains(word), "{word} missing from:\n{top}");
    }
    let bench = text(&ckpt(&["bench", "--help"]).stdout);
    for word in [
        "--workload",
        "--threads",
        "--steps",
        "--seed",
        "--json",
        "--store",
        "--message-bytes",
        "conversation",
    ] {
        assert!(bench.contains(word), "{word} missing from:\n{bench}");
    }
    let demo = text(&ckpt(&["demo", "--help"]).stdout);
    assert!(demo.contains("--steps"), "{demo}");
}

/// `ckpt ARGS`, killed if it has not ended within a minute (a command that waits forever on a
/// store that does not exist would otherwise hang the suite instead of failing it).
fn ckpt_bounded(args: &[&str]) -> Output {
    let child = command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the ckpt binary runs");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = done.send(());
        out
    });
    if finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .is_err()
    {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    waiter
        .join()
        .expect("the waiter thread")
        .expect("the output")
}

/// Every command that reads, or changes what exists, refuses a store that does not exist (a
/// mistyped path, a SQLite file that is not there, a directory without a database) with "no
/// store at ..." and exit code 1, and creates nothing; the commands that write create it.
#[test]
fn read_commands_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("out.bundle");
    let bundle = bundle.to_str().unwrap();
    let commands: &[&[&str]] = &[
        &["executions"],
        &["history", "e"],
        &["show", "e@1"],
        &["diff", "e@1", "e@2"],
        &["log", "e"],
        &["grep", "e", "x"],
        &["watch", "e", "--count", "1"],
        &["fork", "e@1", "f"],
        &["delete", "e@1", "--yes"],
        &["clear", "e", "--yes"],
        &["prune", "e", "--keep-latest", "1", "--yes"],
        &["gc"],
        &["verify"],
        &["compact"],
        &["rekey"],
        &["stats"],
        &["export", "--all", "-o", bundle],
    ];
    let typo = dir.path().join("ckpt-dta");
    let sqlite = dir.path().join("x.db");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let stores = [
        typo.to_str().unwrap().to_owned(),
        format!("sqlite://{}", sqlite.display()),
        empty.to_str().unwrap().to_owned(),
    ];
    for store in &stores {
        for args in commands {
            let mut all = vec!["--store", store.as_str()];
            all.extend_from_slice(args);
            let out = ckpt_bounded(&all);
            let stderr = text(&out.stderr);
            // `verify` tells configuration (no store, no key: 3) from damage (1).
            let code = if args[0] == "verify" { 3 } else { 1 };
            assert_eq!(out.status.code(), Some(code), "{all:?}: {stderr}");
            assert!(
                stderr.contains(&format!("no store at {store}")),
                "{all:?}: {stderr}"
            );
            assert!(
                stderr.contains("ckpt demo") || stderr.contains("--store"),
                "{all:?}: {stderr}"
            );
            assert!(!typo.exists(), "{all:?} created {}", typo.display());
            assert!(!sqlite.exists(), "{all:?} created {}", sqlite.display());
            let in_empty = std::fs::read_dir(&empty).unwrap().count();
            assert_eq!(in_empty, 0, "{all:?} wrote into {}", empty.display());
            assert!(!Path::new(bundle).exists(), "{all:?} wrote a bundle");
        }
    }
    // The commands that write create the store, and then the others read it.
    for store in &stores {
        let out = ckpt(&["--store", store, "demo", "--steps", "2"]);
        assert!(out.status.success(), "{store}: {}", text(&out.stderr));
        let out = ckpt(&["--store", store, "executions"]);
        assert!(out.status.success(), "{store}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("demo-"), "{}", text(&out.stdout));
    }
}

/// A store URL that names a known scheme without its `//` (`sqlite:x.db`) is refused with the
/// accepted forms, instead of becoming a sled directory named `sqlite:x.db`; a path with a
/// colon further on is still a path.
#[test]
fn a_scheme_without_slashes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["sqlite:x.db", "sled:x", "postgres:/x", "foo://x"] {
        let out = command()
            .args(["--store", url, "demo", "--steps", "1"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
        for form in ["sqlite://PATH", "sled://PATH", "postgres://", "redis://"] {
            assert!(stderr.contains(form), "{url}: {form} missing from {stderr}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{url}");
    }
    let out = command()
        .args(["--store", "./a:b", "demo", "--steps", "1"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path().join("a:b").join("db").exists());
}

/// `ckpt import` of something that is not a bundle stops at its header: /dev/urandom (endless)
/// is refused at once instead of being read into memory, and a bundle entry declaring more
/// than the stated limit is refused unread. Nothing is created either way.
#[test]
fn import_reads_only_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_arg(dir.path());
    if Path::new("/dev/urandom").exists() {
        let out = ckpt_bounded(&["--store", &store, "import", "/dev/urandom"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("not a ckpt bundle"), "{stderr}");
    }
    let mut huge = b"ckptbundle\0\x01".to_vec();
    huge.push(3);
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&[0; 64]);
    let file = dir.path().join("huge.bundle");
    std::fs::write(&file, &huge).unwrap();
    let out = ckpt(&["--store", &store, "import", file.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("4294967295 bytes") && stderr.contains("limit of 1073807360 bytes"),
        "{stderr}"
    );
    assert!(!Path::new(&store).exists(), "import created the store");
}

/// A 10 KB execution id (a file pasted by mistake) is refused with a message that shows its
/// start and its length, by every command that takes one, never the whole name.
#[test]
fn long_names_are_shortened_in_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_arg(dir.path());
    let demo = ckpt(&["--store", &store, "demo", "--steps", "1"]);
    assert!(demo.status.success(), "{}", text(&demo.stderr));
    let long = "x".repeat(10 * 1024);
    let id = format!("{long}@1");
    let bundle = dir.path().join("out.bundle");
    let bundle = bundle.to_str().unwrap();
    let commands: &[&[&str]] = &[
        &["history", &long],
        &["log", &long],
        &["grep", &long, "x"],
        &["watch", &long, "--count", "1"],
        &["clear", &long, "--yes"],
        &["prune", &long, "--keep-latest", "1", "--yes"],
        &["export", &long, "-o", bundle],
        &["fork", "e@1", &long],
        &["fork", &id, "f"],
        &["delete", &id, "--yes"],
        &["delete", &long, "--yes"],
        &["show", &id],
        &["diff", &id, "e@1"],
        &["copy", "--from", &store, "--to", "memory://", &long],
    ];
    for args in commands {
        let mut all = vec!["--store", store.as_str()];
        all.extend_from_slice(args);
        let out = ckpt_bounded(&all);
        let stderr = text(&out.stderr);
        let shown: Vec<String> = all.iter().map(|a| a.chars().take(20).collect()).collect();
        assert!(!out.status.success(), "{shown:?}");
        assert!(
            stderr.len() < 1_000,
            "{shown:?}: {} bytes of error",
            stderr.len()
        );
        assert!(stderr.contains("bytes)"), "{shown:?}: {stderr}");
        assert!(stderr.contains(&"x".repeat(64)), "{shown:?}: {stderr}");
    }
}

/// Error messages are tidy: no run of spaces left by a string literal continued on the next
/// line without its `\` (which once put ~18 spaces into several messages).
#[test]
fn error_messages_have_no_runs_of_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_arg(dir.path());
    let plain = dir.path().join("plain");
    let sealed = dir.path().join("sealed");
    let bundle = dir.path().join("sealed.bundle");
    let key = "ab".repeat(32);
    let with_key = |args: &[&str]| {
        command()
            .args(args)
            .env("CKPT_KEY", &key)
            .output()
            .expect("the ckpt binary runs")
    };
    let sealed_url = format!("{}?key_env=CKPT_KEY", sealed.display());
    let setup = [
        with_key(&["--store", &sealed_url, "demo", "--steps", "1"]),
        with_key(&[
            "--store",
            &sealed_url,
            "export",
            "--all",
            "-o",
            bundle.to_str().unwrap(),
        ]),
        ckpt(&["--store", plain.to_str().unwrap(), "demo", "--steps", "1"]),
    ];
    for out in &setup {
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let failures = [
        // A key in the URL.
        ckpt(&["--store", &format!("{store}?key={key}"), "executions"]),
        // An encrypted bundle into a plaintext store.
        ckpt(&[
            "--store",
            plain.to_str().unwrap(),
            "import",
            bundle.to_str().unwrap(),
        ]),
        // The encrypted store without its key, and with an empty key_env.
        ckpt(&["--store", sealed.to_str().unwrap(), "executions"]),
        ckpt(&[
            "--store",
            &format!("{}?key_env=", sealed.display()),
            "executions",
        ]),
        ckpt(&["--store", "sqlite:x.db", "executions"]),
        ckpt(&["--store", &store, "executions"]),
        ckpt(&[
            "--store",
            "postgres://bob@127.0.0.1:1/app?timeout=1s",
            "executions",
        ]),
        ckpt(&["--store", plain.to_str().unwrap(), "show", "nope@1"]),
        ckpt(&["--store", plain.to_str().unwrap(), "history", "nope"]),
        ckpt(&[
            "--store",
            plain.to_str().unwrap(),
            "delete",
            "nope",
            "--yes",
        ]),
        ckpt(&[
            "--store",
            plain.to_str().unwrap(),
            "import",
            "/nonexistent.bundle",
        ]),
    ];
    for out in &failures {
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        for line in stderr.lines() {
            let message = line
                .strip_prefix("error: ")
                .or_else(|| line.strip_prefix("  caused by: "))
                .unwrap_or(line);
            assert!(!message.contains("   "), "a run of spaces in: {line:?}");
            assert!(!message.starts_with(' '), "an indented line: {line:?}");
        }
    }
}
