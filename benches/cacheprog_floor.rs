//! The floor of any GOCACHEPROG: a cache program that does no work per request.
//!
//! `benches/cacheprog.sh` compiles this with `rustc -O` (std only, so it needs nothing but
//! the toolchain that builds the agent) and runs the same warm build through it. It answers
//! every `get` from a table loaded before its first response: no file system call, no JSON
//! parser, no hashing; one `read` and one `write` per request. Whatever a warm build costs
//! through it over plain `GOCACHE` is the price of the protocol itself on this machine
//! (cmd/go's JSON, its reader goroutine's hand-offs, two processes' wake-ups), which no
//! cache program can go under. It is a measuring instrument, not part of the product.
//!
//!     cacheprog_floor TABLE
//!
//! TABLE: one line per action, `<ActionID base64> <response fields without ID>`, as the
//! bench script writes it from a filled cache.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: cacheprog_floor TABLE");
        std::process::exit(2);
    };
    let table = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cacheprog_floor: {path}: {e}");
            std::process::exit(2);
        }
    };
    let answers: HashMap<&str, &str> = table.lines().filter_map(|l| l.split_once(' ')).collect();
    let mut r = BufReader::new(std::io::stdin().lock());
    let mut w = std::io::stdout().lock();
    let mut say = |s: &str| w.write_all(s.as_bytes()).and_then(|()| w.flush()).is_ok();
    if !say("{\"ID\":0,\"KnownCommands\":[\"get\",\"close\"]}\n") {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // cmd/go writes `{"ID":N,"Command":"get","ActionID":"<base64>"}` and a blank line.
        let Some(id) = field(&line, "\"ID\":", |c| c.is_ascii_digit()) else {
            continue;
        };
        let answer = if line.contains("\"Command\":\"close\"") {
            say(&format!("{{\"ID\":{id}}}\n"));
            return;
        } else {
            match field(&line, "\"ActionID\":\"", |c| c != '"').and_then(|a| answers.get(a)) {
                Some(fields) => format!("{{\"ID\":{id},{fields}}}\n"),
                None => format!("{{\"ID\":{id},\"Miss\":true}}\n"),
            }
        };
        if !say(&answer) {
            return;
        }
    }
}

/// The text after `key` up to the first character `keep` rejects.
fn field<'a>(line: &'a str, key: &str, keep: impl Fn(char) -> bool) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest.find(|c| !keep(c)).unwrap_or(rest.len());
    Some(&rest[..end])
}
