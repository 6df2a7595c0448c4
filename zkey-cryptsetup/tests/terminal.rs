//! Passphrase prompts on a real terminal: the binary runs under `script`, which gives it a
//! pseudo-terminal as stdin and controlling terminal, and the test types into it only after
//! each prompt has appeared, as a person would.
mod common;
use common::*;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROMPT: &str = "Enter passphrase for";

/// Runs the binary with `args` on a terminal and answers its passphrase prompts with
/// `answers`, one per prompt. Returns the exit code and everything the terminal showed.
fn on_terminal(f: &Fixture, args: &[&str], answers: &[&[u8]]) -> (i32, String) {
    let mut cmd = bin().display().to_string();
    for a in args {
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)),
            "{a:?} needs quoting"
        );
        cmd.push(' ');
        cmd.push_str(a);
    }
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("AP_SIM_DIR", f.sim.dir())
        .env_remove("FAILPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) is installed");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let reader = {
        let seen = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    let shown = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    for (i, answer) in answers.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while shown().matches(PROMPT).count() <= i {
            assert!(
                Instant::now() < deadline,
                "no prompt {} in {:?}",
                i + 1,
                shown()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // rpassword prints the prompt before it turns echo off: a person's pause, so that the
        // answer is not typed ahead into an echoing terminal.
        std::thread::sleep(Duration::from_millis(300));
        stdin.write_all(answer).unwrap();
        stdin.write_all(b"\r").unwrap();
        stdin.flush().unwrap();
    }
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    (status.code().unwrap_or(-1), shown())
}

fn p(img: &std::path::Path) -> &str {
    img.to_str().unwrap()
}

#[test]
fn wrong_passphrases_are_asked_again_while_a_re_encipher_is_pending() {
    let f = Fixture::new();
    let img = f.format("v.img", true);
    f.load_new();
    let o = f.run(&["reencipher", p(&img), "--staged"], b"disk1pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    f.set();

    // Two wrong tries out of -T 2: refused, nothing changed.
    let before = luks_dump(&img);
    let bytes = header_bytes(&img);
    let (code, shown) = on_terminal(
        &f,
        &["reencipher", p(&img), "--complete", "-q", "-T", "2"],
        &[b"nope", b"wrong"],
    );
    assert_eq!(code, 1, "{shown}");
    let flat_shown = flat(&shown);
    assert_eq!(
        flat_shown
            .matches("No key available with this passphrase.")
            .count(),
        2,
        "{shown}"
    );
    assert_eq!(shown.matches(PROMPT).count(), 2, "{shown}");
    assert!(
        flat_shown.contains("2 tries on the terminal used up"),
        "{shown}"
    );
    assert!(!shown.contains("os error"), "{shown}");
    let error = shown
        .lines()
        .find(|l| l.starts_with("zkey-cryptsetup:"))
        .unwrap_or_else(|| panic!("no error line in {shown:?}"));
    assert!(!error.contains("nope"), "{error}");
    assert_eq!(before, luks_dump(&img));
    assert!(bytes == header_bytes(&img));

    // Two wrong tries, then the right one within the default three: completed.
    let (code, shown) = on_terminal(
        &f,
        &["reencipher", p(&img), "--complete", "-q"],
        &[b"nope", b"wrong", b"disk1pw"],
    );
    assert_eq!(code, 0, "{shown}");
    assert_eq!(
        flat(&shown)
            .matches("No key available with this passphrase.")
            .count(),
        2,
        "{shown}"
    );
    assert!(flat(&shown).contains("completed successfully"), "{shown}");
    assert!(token_of(&img, "paes-reencipher").is_none());
    assert!(opens(&img, PW));
}
