//! `gocache-warden alert test`: one real delivery through each configured sink (a webhook on a
//! local HTTP server, and an exec sink), about the policy's first cache with its real figures.

mod support;

use std::io::{BufRead, BufReader, Read, Write};

#[test]
fn alert_test_delivers_through_every_sink() {
    let d = support::tempdir();
    let cache = d.path().join("cache");
    support::mkcache(&cache, 50, 2);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).expect("body");
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .expect("reply");
        body
    });
    let url = d.path().join("url");
    std::fs::write(&url, format!("http://127.0.0.1:{port}/hook\n")).expect("url");
    let out = d.path().join("exec.json");
    let p = support::policy(
        d.path(),
        "p.toml",
        &format!(
            "[cache.t]\npath = \"{}\"\nmax_size = \"1GiB\"\n[alert.hook]\nkind = \"webhook\"\nurl_file = \"{}\"\n[alert.script]\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"cat > {}\"]\n",
            cache.display(),
            url.display(),
            out.display()
        ),
    );
    let o = support::run(
        [
            "--policy".to_string(),
            p.display().to_string(),
            "alert".into(),
            "test".into(),
        ],
        &[],
    );
    let text = support::stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", support::stderr(&o));
    assert!(
        text.contains("hook: delivered") && text.contains("script: delivered"),
        "{text}"
    );
    let body: serde_json::Value =
        serde_json::from_slice(&server.join().expect("server")).expect("json body");
    assert_eq!(body["kind"], "test");
    assert_eq!(body["cache"].as_str(), cache.to_str());
    assert_eq!(body["size_bytes"].as_u64(), Some(support::du_bytes(&cache)));
    assert!(
        body["root"]["ls_line"]
            .as_str()
            .is_some_and(|l| l.starts_with('d')),
        "{body}"
    );
    let exec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("exec sink output")).expect("json");
    assert_eq!(exec["id"], "test");
    assert!(!text.contains("127.0.0.1"), "the URL is a secret: {text}");
}
